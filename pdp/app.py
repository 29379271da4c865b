"""The broker's HTTP surface (docs/contract.md §2). Handlers parse, call the core
(`pdp.exchange`, `pdp.tokens`, `pdp.revocation`, `pdp.audit`) and render; an unexpected
failure is logged and answered 503, never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE
from jitmesh.log import get_logger
from pdp.admin.tokens import AdminTokens
from pdp.approvals import api as approvals_api
from pdp.attestation.verify import (
    JWKSURL,
    Attestor,
    JWKSAttestor,
    JWKSFile,
    KeySource,
    KubePodReader,
    PodReader,
    TokenReviewAttestor,
    load_kube_api_client,
)
from pdp.audit import Auditor, decision_record, record_json
from pdp.config import BrokerConfig
from pdp.exchange import MAX_BODY_BYTES, Issued, TokenExchange, parse_form
from pdp.http import admin as http_admin
from pdp.http.body import int_param, read_body
from pdp.http.errors import NO_STORE, OAuthError, error_response, guarded, invalid_request, oauth_response, unavailable
from pdp.http.services import Broker, broker_of
from pdp.http.verify import verify_token
from pdp.metrics import BrokerMetrics
from pdp.opa import OPAClient
from pdp.revocation import api as revocation_api
from pdp.revocation import wiring as revocation_wiring
from pdp.revocation.index import PURGE_EVERY, RevocationIndex
from pdp.shadow.live import LiveShadow, live_report
from pdp.store import open_store_from_url
from pdp.store.base import Revocation, Store, StoreError
from pdp.tokens import KeyRing

log = get_logger("pdp")

AUDIT_MAX_LIMIT = 1000



async def read_form(request: Request) -> dict[str, list[str]]:
    return parse_form(await read_body(request, MAX_BODY_BYTES), request.headers.get("content-type"))


async def require_admin(request: Request) -> None:
    await http_admin.require_admin(request, request.url.path)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# --- token exchange, revocation, introspection --------------------------------------------

@guarded
async def token_endpoint(request: Request) -> Response:
    broker = broker_of(request)
    started = time.perf_counter()
    try:
        try:
            params = await read_form(request)
        except OAuthError as err:
            broker.metrics.denied.labels(err.error).inc()
            raise
        outcome = await broker.exchange.exchange(params, client_ip(request))
    finally:
        broker.metrics.request_seconds.observe(time.perf_counter() - started)
    if isinstance(outcome, Issued):
        revocation_wiring.note_issued(broker, outcome.access_token)  # the pod watcher's list
        return oauth_response(200, outcome.body())
    return error_response(outcome)


@guarded
async def revoke_endpoint(request: Request) -> Response:
    """RFC 7009: the holder of a token revokes it; 200 whatever the token was."""
    broker = broker_of(request)
    params = await read_form(request)
    tokens = params.get("token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise invalid_request("exactly one token parameter is required")
    claims = await verify_token(broker, tokens[0])
    if claims is None or broker.revocations.lookup("jti", claims["jti"]) is not None:
        return Response(status_code=200, headers=NO_STORE)
    now = broker.clock()
    revocation = Revocation(id=str(uuid.uuid4()), kind="jti", value=str(claims["jti"]), reason="revoked by holder",
                            created_at=now, created_by=str(claims["sub"]), expires_at=float(claims["exp"]))
    try:
        await broker.store.add_revocation(revocation)
    except StoreError as exc:
        log.error("revoke.store_failed", jti=revocation.value, error=str(exc))
        return error_response(unavailable("the revocation could not be stored; try again"))
    broker.revocations.add(revocation)
    record = decision_record(decision_id=str(uuid.uuid4()), time=now, event="revoked",
                             policy_path=broker.config.policy_path, subject=str(claims["sub"]),
                             audience=str(claims.get("aud")), jti=revocation.value,
                             extra={"revocation_id": revocation.id, "kind": "jti", "by": "holder"})
    with contextlib.suppress(StoreError):
        await broker.auditor.write(record)
    return Response(status_code=200, headers=NO_STORE)


@guarded
async def introspect_endpoint(request: Request) -> Response:
    """RFC 7662 for admins: active only for this broker's unexpired, unrevoked tokens."""
    broker = broker_of(request)
    await require_admin(request)
    params = await read_form(request)
    tokens = params.get("token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise invalid_request("exactly one token parameter is required")
    claims = await verify_token(broker, tokens[0])
    if claims is None or broker.revocations.token_revoked(claims) is not None:
        return oauth_response(200, {"active": False})
    doc = {"active": True, "token_type": "Bearer"}
    doc.update({k: v for k, v in claims.items()})
    return oauth_response(200, doc)


# --- discovery and keys -----------------------------------------------------------------

async def discovery_endpoint(request: Request) -> Response:
    issuer = broker_of(request).config.issuer
    return JSONResponse({
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })


async def jwks_endpoint(request: Request) -> Response:
    return JSONResponse(broker_of(request).keys.jwks(), headers={"Cache-Control": "max-age=60"})


# --- operations ---------------------------------------------------------------------------

async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@guarded
async def readyz(request: Request) -> Response:
    broker = broker_of(request)
    checks: dict[str, str] = {}
    checks["opa"] = "ok" if await broker.opa.healthy() else "unreachable"
    try:
        await broker.store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = f"error: {exc}"
    try:
        broker.revocations.check_fresh()
        checks["revocations"] = "ok"
    except Exception as exc:
        checks["revocations"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unready", "checks": checks},
                        status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(broker_of(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def parse_time(value: str, name: str) -> float:
    """Unix seconds or RFC 3339."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        ts = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_request(f"{name} {value!r:.60}: expected unix seconds or an RFC 3339 time") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.UTC)
    return ts.timestamp()


@guarded
async def audit_endpoint(request: Request) -> Response:
    broker = broker_of(request)
    await require_admin(request)
    q = request.query_params
    since = parse_time(q["since"], "since") if q.get("since") else None
    until = parse_time(q["until"], "until") if q.get("until") else None
    limit = int_param(q.get("limit"), "limit", 1, AUDIT_MAX_LIMIT, 100)
    after_seq = int_param(q.get("after_seq"), "after_seq", 0, 2**62, None)
    records = await broker.store.query_audit(
        since=since, until=until, subject=q.get("subject") or None, event=q.get("event") or None,
        audience=q.get("audience") or None, decision_id=q.get("decision_id") or None,
        after_seq=after_seq, limit=limit or 100)
    next_seq = records[-1].seq if records else after_seq
    return JSONResponse({"records": [record_json(r) for r in records], "next_seq": next_seq})


@guarded
async def shadow_report_endpoint(request: Request) -> Response:
    """docs/contract.md §6; the document is pdp/shadow/report.py's, `since`/`until` as for the audit."""
    broker = broker_of(request)
    await require_admin(request)
    q = request.query_params
    since = parse_time(q["since"], "since") if q.get("since") else None
    until = parse_time(q["until"], "until") if q.get("until") else None
    return JSONResponse(await live_report(broker.store, broker.shadow, since=since, until=until, now=broker.clock(),
                                          enforced_policy=broker.config.policy_path,
                                          candidate_policy=broker.config.shadow_policy_path))


# --- assembly -----------------------------------------------------------------------------

def build_attestor(config: BrokerConfig) -> Attestor:
    api_client = None
    if config.attestation == "tokenreview" or config.pod_lookup:
        api_client = load_kube_api_client(config.kubeconfig)
    pods: PodReader | None = KubePodReader(api_client) if config.pod_lookup else None
    if config.attestation == "tokenreview":
        return TokenReviewAttestor(api_client, config.subject_audience, pods)
    source: KeySource
    if config.jwks_file is not None:
        source = JWKSFile(config.jwks_file)
    else:
        assert config.jwks_url is not None
        source = JWKSURL(config.jwks_url)
    return JWKSAttestor(source, config.subject_issuer, config.subject_audience, pods)


async def _every(interval: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except StoreError as exc:
            log.warning(f"{name}.failed", error=str(exc))
        except Exception:
            log.error(f"{name}.failed", exc_info=True)


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
        revocations = RevocationIndex(the_store, max_staleness=config.revocation_max_staleness)
        the_opa = opa or OPAClient(config.opa_url, timeout=config.opa_timeout)
        the_attestor = attestor or build_attestor(config)
        auditor = Auditor(the_store)
        try:
            await keys.refresh(clock())
            await revocations.load()
        except BaseException:
            await the_store.close()
            raise
        shadow = (LiveShadow(config.shadow_policy_path, config.opa_url, the_store, metrics.registry)
                  if config.shadow_policy_path else None)
        exchange = TokenExchange(config, the_attestor, the_opa, keys, revocations, auditor, metrics, clock, shadow)
        broker = Broker(config=config, store=the_store, keys=keys, revocations=revocations, auditor=auditor,
                        metrics=metrics, opa=the_opa, attestor=the_attestor, admin=AdminTokens(config.admin_token_file),
                        exchange=exchange, clock=clock, shadow=shadow)
        key_interval = max(0.25, min(30.0, config.key_rotation / 4))
        broker.tasks = [
            asyncio.create_task(_every(key_interval, lambda: keys.refresh(clock()), "keys.refresh")),
            asyncio.create_task(revocations.run()),
            asyncio.create_task(_every(PURGE_EVERY, lambda: revocations.purge(clock()), "revocations.purge")),
            asyncio.create_task(_every(PURGE_EVERY, lambda: approvals_api.purge(the_store, clock()),
                                       "access_requests.purge")),
            *([asyncio.create_task(shadow.run())] if shadow else []),
        ]
        app.state.broker = broker
        broker.tasks += revocation_wiring.start(broker)  # event stream, pod watcher, Kubernetes admins
        log.info("broker.started", issuer=config.issuer, opa_url=config.opa_url, policy_path=config.policy_path,
                 attestation=config.attestation, store=config.store_url.split("@")[-1], kid=keys.current.record.kid)
        try:
            yield
        finally:
            for task in broker.tasks:
                task.cancel()
            await asyncio.gather(*broker.tasks, return_exceptions=True)
            if shadow is not None:
                await shadow.close()
            await the_opa.close()
            await the_attestor.close()
            await the_store.close()
            log.info("broker.stopped")

    routes = [
        Route("/token", token_endpoint, methods=["POST"]),
        Route("/revoke", revoke_endpoint, methods=["POST"]),
        Route("/introspect", introspect_endpoint, methods=["POST"]),
        Route("/.well-known/oauth-authorization-server", discovery_endpoint),
        Route("/.well-known/openid-configuration", discovery_endpoint),
        Route("/jwks", jwks_endpoint),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/admin/audit", audit_endpoint),
        Route("/v1/admin/shadow/report", shadow_report_endpoint),
        *revocation_api.routes(guarded),
        *approvals_api.routes(guarded),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
