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
from typing import Protocol

import uvicorn

from jitmesh.contract import ENV_LISTEN, ENV_TOKEN_DIR, ENV_TOKEN_GROUP
from jitmesh.log import get_logger
from sidecar import files
from sidecar.agent import Agent
from sidecar.api import build_app
from sidecar.broker import BrokerClient
from sidecar.config import ConfigError, SidecarConfig
from sidecar.events import RevocationSubscriber

log = get_logger("sidecar")

# Bounded so SIGTERM finishes in about two seconds even with a client holding a connection.
_API_GRACE = 1
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
    try:
        infos = socket.getaddrinfo(config.listen_host, config.listen_port, type=socket.SOCK_STREAM)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"{ENV_LISTEN}={config.listen_host}:{config.listen_port}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


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


async def serve(config: SidecarConfig, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    agent = Agent(config, BrokerClient(config))
    server = _EmbeddedServer(uvicorn.Config(build_app(agent), log_config=None, access_log=False,
                                            lifespan="off", ws="none", http="h11", server_header=False,
                                            timeout_graceful_shutdown=_API_GRACE))
    # revocation events remove a revoked token's file at once (sidecar/events.py)
    subscriber = RevocationSubscriber(config, agent)
    events = asyncio.create_task(subscriber.run(), name="revocation-events")
    await subscribe_then_start(agent, subscriber.connected)
    api = asyncio.create_task(server.serve(sockets=[sock]), name="api")
    stopped = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({api, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if api.done():
        # The API died on its own: still clean up the tokens, but report the failure.
        log.error("sidecar.api_failed", error=repr(api.exception()) if not api.cancelled() else "cancelled")
        code = 1
    log.info("sidecar.stopping", signal=received[0] if received else None)
    server.should_exit = True  # the API winds down while the agent revokes
    events.cancel()
    await agent.shutdown()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(api, timeout=_API_GRACE + 0.5)
    stopped.cancel()
    return code
