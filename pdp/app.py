"""The broker app: its collaborators built from the config, its background tasks, and its
routes. Handlers live with their capability (`pdp.token_api`, `pdp.ops_api`,
`pdp.revocation.api`, `pdp.approvals.api`, `pdp.shadow.api`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.routing import Route

from jitmesh.log import get_logger
from pdp import access_bundle, ops_api, token_api
from pdp.admin.tokens import TokenFile
from pdp.approvals import api as approvals_api
from pdp.attestation.identity import Attestor, PodReader
from pdp.attestation.kube import ApiServerCalls, KubePodReader, TokenReviewAttestor, load_kube_api_client
from pdp.attestation.verify import JWKSURL, JWKSAttestor, JWKSFile, KeySource
from pdp.audit import Auditor, purge_audit
from pdp.config import BrokerConfig
from pdp.dblogins.metrics import LoginMetrics
from pdp.dblogins.service import DatabaseLogins
from pdp.exchange import TokenExchange
from pdp.http.errors import guarded, http_exception
from pdp.http.services import Broker
from pdp.metrics import BrokerMetrics
from pdp.opa import OPAClient
from pdp.revocation import api as revocation_api
from pdp.revocation import wiring as revocation_wiring
from pdp.revocation.events import Announcement, Viewer
from pdp.revocation.index import PURGE_EVERY, RevocationIndex
from pdp.shadow import api as shadow_api
from pdp.shadow.live import LiveShadow
from pdp.store import open_store_from_url
from pdp.store.base import Store, StoreError
from pdp.tokens import KeyRing

log = get_logger("pdp")


def build_attestor(config: BrokerConfig, calls: ApiServerCalls | None = None) -> Attestor:
    """The attestor the config names; its API-server calls run on `calls`."""
    api_client = None
    if config.attestation == "tokenreview" or config.pod_lookup:
        api_client = load_kube_api_client(config.kubeconfig)
    pods: PodReader | None = KubePodReader(api_client, calls=calls) if config.pod_lookup else None
    if config.attestation == "tokenreview":
        return TokenReviewAttestor(api_client, config.subject_audience, pods, calls=calls,
                                   max_age=config.max_subject_token_age)
    source: KeySource
    if config.jwks_file is not None:
        source = JWKSFile(config.jwks_file)
    else:
        assert config.jwks_url is not None
        source = JWKSURL(config.jwks_url)
    return JWKSAttestor(source, config.subject_issuer, config.subject_audience, pods,
                        max_age=config.max_subject_token_age)


async def _every(interval: float, job: Callable[[], Awaitable[object]], name: str, at_start: bool = False) -> None:
    if not at_start:
        await asyncio.sleep(interval)
    while True:
        try:
            await job()
        except StoreError as exc:
            log.warning(f"{name}.failed", error=str(exc))
        except Exception:
            log.error(f"{name}.failed", exc_info=True)
        await asyncio.sleep(interval)


def create_app(config: BrokerConfig, store: Store | None = None, attestor: Attestor | None = None,
               opa: OPAClient | None = None, clock: Callable[[], float] = time.time) -> Starlette:
    """The broker app. A store passed in is opened and closed by the caller's app lifespan
    all the same; the collaborators default to the ones the config names."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_store = store or open_store_from_url(config.store_url)
        await the_store.open()
        metrics = BrokerMetrics()
        keys = KeyRing(the_store, config.key_rotation, config.max_ttl)
        revocations = RevocationIndex(the_store, max_staleness=config.revocation_max_staleness,
                                      max_token_ttl=config.max_ttl, clock=clock)
        the_opa = opa or OPAClient(config.opa_url, timeout=config.opa_timeout)
        calls = ApiServerCalls()  # every API-server call of this broker, bounded
        the_attestor = attestor or build_attestor(config, calls)
        auditor = Auditor(the_store, clock=clock)
        try:
            await keys.refresh(clock())
            await revocations.load()
        except BaseException:
            await the_store.close()
            calls.close()
            raise
        shadow = (LiveShadow(config.shadow_policy_path, config.opa_url, the_store, metrics.registry,
                             candidate_dir=config.shadow_policy_dir, opa_bin=config.opa_bin)
                  if config.shadow_policy_path else None)
        logins = DatabaseLogins(config.targets, the_store, revocations, clock=clock,
                                 metrics=LoginMetrics(metrics.registry)) if config.targets.postgresql \
            else None
        if logins is not None:
            await logins.open()
        exchange = TokenExchange(config, the_attestor, the_opa, keys, revocations, auditor, metrics, clock, shadow,
                                 logins=logins)
        broker = Broker(config=config, store=the_store, keys=keys, revocations=revocations, auditor=auditor,
                        metrics=metrics, opa=the_opa, attestor=the_attestor, admin=TokenFile(config.admin_token_file),
                        exchange=exchange, clock=clock, shadow=shadow, apiserver=calls,
                        readers=TokenFile(config.reader_token_file) if config.reader_token_file else None)
        key_interval = max(0.25, min(30.0, config.key_rotation / 4))
        broker.tasks = [
            asyncio.create_task(_every(key_interval, lambda: keys.refresh(clock()), "keys.refresh")),
            asyncio.create_task(revocations.run()),
            asyncio.create_task(_every(PURGE_EVERY, lambda: revocations.purge(clock()), "revocations.purge")),
            asyncio.create_task(_every(PURGE_EVERY, lambda: approvals_api.purge(the_store, clock()),
                                       "access_requests.purge")),
            asyncio.create_task(_every(PURGE_EVERY, lambda: purge_audit(the_store, clock(), config.audit_retention),
                                       "audit.purge", at_start=True)),
            asyncio.create_task(_every(PURGE_EVERY, lambda: the_store.purge_dpop_proofs(clock()),
                                       "dpop_proofs.purge")),
            asyncio.create_task(auditor.run()),
            *([asyncio.create_task(shadow.run())] if shadow else []),
        ]
        app.state.broker = broker
        broker.tasks += revocation_wiring.start(broker)  # event stream, pod watcher, Kubernetes admins
        if config.access_policy_dir is not None:
            hub = broker.hub

            def announce(entrypoint: str, etag: str) -> None:
                told = 0 if hub is None else hub.announce(Announcement(
                    "policy", {"entrypoint": entrypoint, "etag": etag, "time": clock()}))
                log.info("access_policy.announced", entrypoint=entrypoint, etag=etag, streams=told)

            bundles = access_bundle.bundles_for(config.access_policy_dir, config.opa_bin, announce, auditor.write)
            if bundles is not None:
                app.state.access_bundles = bundles
                broker.tasks.append(asyncio.create_task(bundles.watch(), name="access-policy-watch"))
        if logins is not None and broker.hub is not None:
            revoked = broker.hub.open(Viewer(admin=True, name="dblogins"))  # held for the broker's life
            broker.tasks += [asyncio.create_task(logins.follow(revoked), name="dblogins-revocations"),
                             asyncio.create_task(logins.run_expiry(), name="dblogins-expiry"),
                             asyncio.create_task(logins.run_sweeps(), name="dblogins-sweep")]
        log.info("broker.started", issuer=config.issuer, opa_url=config.opa_url, policy_path=config.policy_path,
                 attestation=config.attestation, store=config.store_url.split("@")[-1], kid=keys.current.record.kid)
        if config.enforcement == "dry-run":
            log.warning("broker.dry_run", message="--enforcement dry-run: requests the policy denies are ISSUED "
                        "anyway, marked with the jitmesh.io/dry_run claim; never run a production broker like this")
        try:
            yield
        finally:
            for task in broker.tasks:
                task.cancel()
            await asyncio.gather(*broker.tasks, return_exceptions=True)
            if shadow is not None:
                await shadow.close()
            if logins is not None:
                await logins.close()
            await the_opa.close()
            await the_attestor.close()
            calls.close()
            await the_store.close()
            log.info("broker.stopped")

    routes = [
        Route("/token", token_api.token_endpoint, methods=["POST"]),
        Route("/revoke", token_api.revoke_endpoint, methods=["POST"]),
        Route("/introspect", token_api.introspect_endpoint, methods=["POST"]),
        Route("/.well-known/oauth-authorization-server", token_api.discovery_endpoint),
        Route("/.well-known/openid-configuration", token_api.discovery_endpoint),
        Route("/jwks", token_api.jwks_endpoint),
        Route("/v1/access-policy/bundle", guarded(access_bundle.access_bundle_endpoint)),
        Route("/healthz", ops_api.healthz),
        Route("/readyz", ops_api.readyz),
        Route("/metrics", ops_api.metrics_endpoint),
        Route("/v1/admin/audit", ops_api.audit_endpoint),
        Route("/v1/admin/shadow/report", shadow_api.shadow_report_endpoint),
        *revocation_api.routes(guarded),
        *approvals_api.routes(guarded),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: http_exception, 405: http_exception})
