"""The sidecar process: the agent and its local API on one event loop, stopped by SIGTERM.

On SIGTERM (or SIGINT) the agent removes its files and revokes its tokens within the
shutdown timeout, the API stops, and the process exits 0, so a Job's pod completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn

from jitmesh.contract import (
    ENV_LISTEN,
    ENV_TOKEN_DIR,
    ENV_TOKEN_GROUP,
    ENV_UPSTREAM_LISTEN_PREFIX,
    audience_env_suffix,
)
from jitmesh.log import get_logger
from sidecar import files
from sidecar.agent import Agent
from sidecar.api import build_app
from sidecar.broker import BrokerClient
from sidecar.config import ConfigError, SidecarConfig
from sidecar.events import RevocationSubscriber

if TYPE_CHECKING:
    from sidecar.proof import ProofKey

log = get_logger("sidecar")

# Bounded so SIGTERM finishes in about two seconds even with a client holding a connection.
_API_GRACE = 1
# Requests in flight per upstream listener; beyond it uvicorn answers 503 rather than queue without bound.
UPSTREAM_CONCURRENCY = 256
# How long the first tokens wait for the revocation stream to open (see subscribe_then_start).
SUBSCRIBE_FIRST_BOUND = 2.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the agent owns SIGTERM (revoke, remove,
    exit 0), and uvicorn would otherwise re-raise the signal after shutting down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_token_dir(config: SidecarConfig) -> None:
    try:
        files.prepare_token_dir(config.token_dir, config.file_mode, config.file_gid)
    except PermissionError as exc:
        if config.file_gid is not None and exc.filename is None:
            raise ConfigError(f"{ENV_TOKEN_GROUP}={config.file_gid}: cannot give token files this group "
                              f"({exc.strerror}); the sidecar must run as a member of it") from None
        raise ConfigError(f"{ENV_TOKEN_DIR}={config.token_dir}: cannot write token files there "
                          f"({exc.strerror})") from None
    except OSError as exc:
        raise ConfigError(f"{ENV_TOKEN_DIR}={config.token_dir}: cannot write token files there "
                          f"({exc.strerror or exc})") from None


def bind(config: SidecarConfig) -> socket.socket:
    """The API's listening socket, bound before anything else starts so a taken port fails fast."""
    return _bind(config.listen_host, config.listen_port, ENV_LISTEN)


def bind_upstreams(config: SidecarConfig) -> list[socket.socket]:
    """One listening socket per upstream, bound at start like the API's."""
    return [_bind(u.listen_host, u.listen_port, ENV_UPSTREAM_LISTEN_PREFIX + audience_env_suffix(u.audience))
            for u in config.upstreams]


def _bind(host: str, port: int, variable: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, proto, _, addr = infos[0]
        # With the protocol named, asyncio turns Nagle off on every accepted connection; with 0 it
        # does not, and a keep-alive client then waits on delayed ACKs (about 40 ms a response).
        sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"{variable}={host}:{port}: cannot listen: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def proof_key(config: SidecarConfig) -> ProofKey | None:
    """With DPoP on, the key every token is bound to: made here, in memory, for this process only."""
    if not config.dpop:
        return None
    from sidecar.proof import ProofKey  # only a DPoP sidecar loads the signing code

    key = ProofKey()
    log.info("dpop.key_ready", jkt=key.jkt)
    return key


def _upstream_servers(config: SidecarConfig, agent: Agent, key: ProofKey | None) -> list[tuple[Any, Any]]:
    """(server, forwarder) per upstream; aiohttp is imported only when there is one."""
    if not config.upstreams:
        return []
    from jitmesh.forwarding import BoundedHttpProtocol
    from sidecar.upstream import UpstreamForwarder

    out: list[tuple[Any, Any]] = []
    for spec in config.upstreams:
        forwarder = UpstreamForwarder(spec, agent, key, timeout=config.upstream_timeout)
        server = _EmbeddedServer(uvicorn.Config(forwarder, log_config=None, access_log=False, lifespan="off",
                                                ws="none", server_header=False, date_header=False,
                                                http=BoundedHttpProtocol, limit_concurrency=UPSTREAM_CONCURRENCY,
                                                timeout_graceful_shutdown=_API_GRACE))
        out.append((server, forwarder))
    return out


class _Startable(Protocol):
    async def start(self) -> None: ...


async def subscribe_then_start(agent: _Startable, connected: asyncio.Event,
                               bound: float = SUBSCRIBE_FIRST_BOUND) -> bool:
    """Start asking for tokens once the revocation stream is open, so that a revocation made
    between the first issuance and the stream's start cannot be missed (the stream begins at
    the broker's current event, and later reconnects resume from Last-Event-ID). A stream that
    cannot open within `bound` does not hold the tokens back. True if the stream opened first."""
    try:
        async with asyncio.timeout(bound):
            await connected.wait()
        opened = True
    except TimeoutError:
        log.warning("events.not_yet_subscribed", waited=bound)
        opened = False
    await agent.start()
    return opened


async def serve(config: SidecarConfig, sock: socket.socket,
                upstream_socks: list[socket.socket] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    key = proof_key(config)
    agent = Agent(config, BrokerClient(config, prover=key))
    server = _EmbeddedServer(uvicorn.Config(build_app(agent, key), log_config=None, access_log=False,
                                            lifespan="off", ws="none", http="h11", server_header=False,
                                            timeout_graceful_shutdown=_API_GRACE))
    # revocation events remove a revoked token's file at once (sidecar/events.py)
    subscriber = RevocationSubscriber(config, agent)
    events = asyncio.create_task(subscriber.run(), name="revocation-events")
    await subscribe_then_start(agent, subscriber.connected)
    api = asyncio.create_task(server.serve(sockets=[sock]), name="api")
    upstreams = _upstream_servers(config, agent, key)
    forwarding = [asyncio.create_task(srv.serve(sockets=[s]), name=f"upstream:{fw.spec.audience}")
                  for (srv, fw), s in zip(upstreams, upstream_socks or [], strict=True)]
    if upstreams:
        log.info("upstream.listening", upstreams={u.audience: f"http://{u.listen_host}:{u.listen_port}"
                                                  for u in config.upstreams}, dpop=key is not None)
    stopped = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({api, stopped, *forwarding}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in (api, *forwarding):
        if task.done():
            # A listener died on its own: still clean up the tokens, but report the failure.
            log.error("sidecar.api_failed", listener=task.get_name(),
                      error=repr(task.exception()) if not task.cancelled() else "cancelled")
            code = 1
    log.info("sidecar.stopping", signal=received[0] if received else None)
    server.should_exit = True  # the API winds down while the agent revokes
    for srv, _ in upstreams:
        srv.should_exit = True
    events.cancel()
    await agent.shutdown()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(api, *forwarding), timeout=_API_GRACE + 0.5)
    for _, fw in upstreams:
        with contextlib.suppress(Exception):
            await fw.close()
    stopped.cancel()
    return code
