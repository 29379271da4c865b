"""The proxy process: the broker's issuer and keys fetched, the event stream followed, the
policy ready, then the proxy and its metrics port served on one event loop until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from jitmesh.log import get_logger
from proxy.broker import BrokerClient, BrokerError, EventFollower
from proxy.config import ProxyConfig
from proxy.gate import Gate
from proxy.keys import JWKSCache
from proxy.metrics import ProxyMetrics
from proxy.policy import RestPolicy
from proxy.revocations import RevocationSet
from proxy.server import GuardedHttpProtocol, ProxyApp, metrics_app
from proxy.verify import TokenVerifier
from proxy.wasm_policy import WasmPolicy

log = get_logger("proxy")

KEYS_REFRESH_SECONDS = 60.0
START_RETRY_SECONDS = 1.0


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _protocol(config: ProxyConfig) -> type[GuardedHttpProtocol]:
    return type("ConfiguredGuardedHttpProtocol", (GuardedHttpProtocol,),
                {"max_header_bytes": config.max_header_bytes, "header_timeout": config.header_timeout})


async def _until(what: str, stop: asyncio.Event, attempt: Any) -> Any:
    while not stop.is_set():
        try:
            return await attempt()
        except BrokerError as exc:
            log.warning("proxy.waiting_for_broker", what=what, error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), START_RETRY_SECONDS)
    return None


def build_policy(config: ProxyConfig, broker: BrokerClient) -> RestPolicy | WasmPolicy:
    if config.opa_url is not None:
        return RestPolicy(config.opa_url, config.policy_path, timeout=config.opa_timeout)
    return WasmPolicy(broker, config.sa_token_file, config.policy_path, refresh=config.policy_refresh)


async def serve(config: ProxyConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = BrokerClient(config.broker_url, config.broker_ca_file, ca_pem=config.broker_ca_pem)
    metrics = ProxyMetrics()
    revocations = RevocationSet()
    keys = JWKSCache(broker.jwks, max_staleness=config.keys_max_staleness)
    issuer = await _until("issuer", stop, broker.issuer)
    if issuer is None:
        await broker.aclose()
        return 0
    while not stop.is_set() and not await keys.refresh():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), START_RETRY_SECONDS)
    policy = build_policy(config, broker)
    follower = EventFollower(broker, config.sa_token_file, config.audiences, revocations, config.stream_max_down,
                             on_policy=policy.wake if isinstance(policy, WasmPolicy) else None)
    if isinstance(policy, WasmPolicy):
        while not stop.is_set() and not await policy.load():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), START_RETRY_SECONDS)
    verifier = TokenVerifier(issuer, config.audiences, keys.key, revocations, leeway=config.leeway,
                             keys_fresh=lambda: keys.fresh)
    metrics.jwks_fetches.set_function(lambda: keys.fetches)
    gate = Gate(verifier, policy, follower.current, metrics)
    app = ProxyApp(gate, config.upstream, metrics, upstream_timeout=config.upstream_timeout,
                   body_idle_timeout=config.body_idle_timeout)

    def ready() -> tuple[bool, dict[str, Any]]:
        detail = {"keys": keys.fresh, "events": follower.connected.is_set(), "revocations": len(revocations),
                  "events_refused": follower.refused, "policy": "rest" if isinstance(policy, RestPolicy) else
                  {"etag": policy.etag, "loaded": policy.loaded}}
        return bool(keys.fresh and follower.connected.is_set()), detail

    async def refresh_keys() -> None:
        while True:
            await asyncio.sleep(KEYS_REFRESH_SECONDS)
            await keys.refresh()
            revocations.purge()

    common: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off", "ws": "none",
                              "server_header": False, "timeout_graceful_shutdown": 2, "timeout_keep_alive": 30}
    host, port = config.listen
    # proxy_headers off: the source of a request is its peer, never what an X-Forwarded-* header
    # claims (it reaches the policy input); that also spares a middleware on every request
    servers = [_EmbeddedServer(uvicorn.Config(app, host=host, port=port, http=_protocol(config),
                                              proxy_headers=False, **common))]
    if config.metrics_listen is not None:
        mhost, mport = config.metrics_listen
        servers.append(_EmbeddedServer(uvicorn.Config(metrics_app(metrics, ready), host=mhost, port=mport,
                                                      **common)))
    tasks = [asyncio.create_task(follower.run(), name="events"),
             asyncio.create_task(refresh_keys(), name="keys"),
             *([asyncio.create_task(policy.run(), name="policy")] if isinstance(policy, WasmPolicy) else [])]
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(follower.connected.wait(), 5.0)
    served = [asyncio.create_task(s.serve(), name="serve") for s in servers]
    log.info("proxy.started", listen=f"{host}:{port}", upstream=config.upstream, audiences=list(config.audiences),
             issuer=issuer, policy="rest" if config.opa_url else "wasm", policy_path=config.policy_path,
             events=follower.connected.is_set(), waited=round(time.monotonic() - started, 3))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, *served}, return_when=asyncio.FIRST_COMPLETED)
    code = 0 if stop.is_set() else 1
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*served, return_exceptions=True)
    for t in [*tasks, stopped]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await app.close()
    await policy.close()
    await broker.aclose()
    log.info("proxy.stopped")
    return code
