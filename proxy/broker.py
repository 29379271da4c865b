"""What the proxy asks of the broker: its issuer (discovery), its keys (`/jwks`), and the
revocation events for the audiences this proxy serves (docs/contract.md §2, §7).

The event stream is authenticated with the proxy's own ServiceAccount token (read afresh on
each connection: the kubelet rotates it) and names the served audiences (`?audience=`), which
the broker checks against its `serves` policy. The first connection replays the whole log
(`Last-Event-ID: 0`) so that revocations made before the proxy started are known; later
ones resume from the last event seen. While no stream is open for longer than
`max_down`, `current()` is False and the proxy answers 503.

The broker also announces a newly built access policy on this stream (`event: policy`);
`on_policy` is called for it and on every (re)connection, when an announcement may have
been missed, so the in-process policy is re-fetched at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from jitmesh import __version__
from jitmesh.log import get_logger
from proxy.revocations import RevocationSet

log = get_logger("proxy.broker")

EVENTS_PATH = "/v1/revocations/events"
# The broker sends a keep-alive after 15 s of silence (pdp/revocation/events.py): a read
# timeout of exactly that lost the race and dropped a healthy stream every 15 s.
READ_TIMEOUT = 20.0


class BrokerError(Exception):
    pass


class BrokerClient:
    def __init__(self, broker_url: str, ca_file: Path | None = None, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None, ca_pem: str | None = None) -> None:
        self.url = broker_url.rstrip("/")
        verify: ssl.SSLContext | str | bool = (ssl.create_default_context(cadata=ca_pem) if ca_pem
                                               else str(ca_file) if ca_file else True)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, read=READ_TIMEOUT), verify=verify,
            transport=transport, headers={"User-Agent": f"jitmesh-proxy/{__version__}"})

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    async def _json(self, path: str) -> Any:
        try:
            r = await self._http.get(self.url + path)
        except httpx.HTTPError as exc:
            raise BrokerError(f"the broker at {self.url} cannot be reached: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise BrokerError(f"the broker answered {path} with HTTP {r.status_code}")
        try:
            return r.json()
        except ValueError:
            raise BrokerError(f"the broker's {path} is not JSON") from None

    async def issuer(self) -> str:
        doc = await self._json("/.well-known/oauth-authorization-server")
        issuer = doc.get("issuer") if isinstance(doc, dict) else None
        if not isinstance(issuer, str) or not issuer:
            raise BrokerError("the broker's discovery document names no issuer")
        return issuer

    async def jwks(self) -> Any:
        return await self._json("/jwks")

    async def aclose(self) -> None:
        await self._http.aclose()


class EventFollower:
    def __init__(self, broker: BrokerClient, sa_token_file: Path, audiences: Sequence[str],
                 revocations: RevocationSet, max_down: float, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, on_policy: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.sa_token_file = sa_token_file
        self.audiences = list(audiences)
        self.revocations = revocations
        self.max_down = max_down
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self.last_event_id = "0"
        self.connected = asyncio.Event()
        self._down_since: float | None = None  # None with `connected` clear: never connected
        self.refused: str | None = None
        self.on_policy = on_policy

    def current(self) -> bool:
        """True while the stream is open, or closed for no longer than `max_down`."""
        if self.connected.is_set():
            return True
        return self._down_since is not None and self._clock() - self._down_since <= self.max_down

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._stream_once()
                failures = 0
                reason = "stream ended"
            except (httpx.HTTPError, SSEError, BrokerError, OSError, UnicodeDecodeError) as exc:
                failures += 1
                reason = f"{type(exc).__name__}: {exc}"[:300]
                if isinstance(exc, httpx.ReadTimeout) and self.connected.is_set():
                    # silent for READ_TIMEOUT: the stream was already gone that long ago
                    self._down_since = self._clock() - READ_TIMEOUT
                    self.connected.clear()
            finally:
                if self.connected.is_set():
                    self._down_since = self._clock()
                self.connected.clear()
            base = min(5.0, 0.2 * 2 ** max(0, failures - 1)) if failures else 0.2
            delay = base / 2 + self._rng.random() * base / 2
            log.info("events.reconnecting", reason=reason, failures=failures, retry_in=round(delay, 2))
            await asyncio.sleep(delay)

    async def _stream_once(self) -> None:
        try:
            sa_token = self.sa_token_file.read_text().strip()
        except OSError as exc:
            raise BrokerError(f"cannot read the ServiceAccount token {self.sa_token_file}: {exc.strerror}") from None
        headers = {"Authorization": f"Bearer {sa_token}", "Last-Event-ID": self.last_event_id}
        params = [("audience", a) for a in self.audiences]
        async with aconnect_sse(self.broker.http, "GET", self.broker.url + EVENTS_PATH, headers=headers,
                                params=params) as source:
            if source.response.status_code != 200:
                body = (await source.response.aread())[:300].decode(errors="replace")
                self.refused = f"HTTP {source.response.status_code}: {body}"
                raise BrokerError(f"the broker refused the event stream: {self.refused}")
            self.refused = None
            async for sse in source.aiter_sse():
                if sse.event in ("revoked", "lifted"):
                    try:
                        data = json.loads(sse.data)
                    except ValueError:
                        log.warning("events.bad_event", data=sse.data[:200])
                        continue
                    if self.revocations.apply(sse.event, data):
                        log.info("events.applied", action=sse.event, kind=data.get("kind"), id=data.get("id"))
                elif sse.event == "resync":  # the broker's full state for this proxy, then live events
                    try:
                        state = json.loads(sse.data)
                    except ValueError:  # without the state, nothing known can be trusted: reconnect
                        raise BrokerError("the broker's resync event is not JSON") from None
                    taken = self.revocations.resync(state.get("revocations") if isinstance(state, dict) else None)
                    log.info("events.resynced", revocations=taken,
                             reason=state.get("reason") if isinstance(state, dict) else None)
                elif sse.event == "policy":
                    log.info("events.policy_announced", data=sse.data[:300])
                    if self.on_policy is not None:
                        self.on_policy()
                if sse.id:
                    self.last_event_id = sse.id
                if sse.event == "ready" and not self.connected.is_set():
                    self.connected.set()
                    log.info("events.subscribed", last_event_id=self.last_event_id, audiences=self.audiences)
                    if self.on_policy is not None:  # an announcement made while disconnected is not replayed
                        self.on_policy()
