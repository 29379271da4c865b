"""The sidecar's subscription to the broker's revocation events (docs/contract.md §5).

One long-lived `GET /v1/revocations/events` (Server-Sent Events), authenticated with the
pod's projected ServiceAccount token (read afresh on every connection: the kubelet
rotates it). On a `revoked` event naming one of the tokens held (its jti), the pod's
subject, the pod's uid or one of the sidecar's audiences, `Agent.on_revoked` removes the
file at once and asks the broker again. The stream is reconnected with backoff and
`Last-Event-ID`, so revocations made while it was down (broker restarted, network cut)
are replayed by the broker and applied all the same. When the broker cannot replay from
that id (its store was made anew, or the id is too far behind), it sends one `resync` event
with every revocation in force that concerns this pod, and the sidecar drops each token it
revokes. A lifted revocation still revokes the tokens issued before it (docs/contract.md
§2): a `lifted` event, or a lifted revocation in a resync, drops a token issued at or
before the revocation was made (or of unknown issue time), so a lift never brings back a
token that was revoked. A stream silent for longer than
`READ_TIMEOUT` (the broker sends a keep-alive every 15 s) counts as dropped.

The sidecar learns its own subject and pod uid from its ServiceAccount token's claims,
unverified: it only compares them with what the broker, which did verify, sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from httpx_sse import SSEError, aconnect_sse

from jitmesh import __version__
from jitmesh.log import get_logger
from sidecar.config import SidecarConfig

log = get_logger("sidecar.events")

EVENTS_PATH = "/v1/revocations/events"
READ_TIMEOUT = 30.0
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0


class HeldJTI(Protocol):
    @property
    def jti(self) -> str | None: ...

    @property
    def iat(self) -> float | None: ...


class RevocationTarget(Protocol):
    """What of the agent the subscriber needs (sidecar/agent.py)."""

    def token(self, audience: str) -> HeldJTI | None: ...

    def on_revoked(self, audience: str, reason: str = "") -> None: ...


@dataclass(frozen=True)
class Identity:
    subject: str | None
    pod_uid: str | None


def identity_of(sa_token: str) -> Identity:
    """Subject and pod uid from a projected ServiceAccount token's claims (not verified)."""
    try:
        payload = sa_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return Identity(None, None)
    if not isinstance(claims, dict):
        return Identity(None, None)
    k8s = claims.get("kubernetes.io")
    pod = k8s.get("pod") if isinstance(k8s, dict) else None
    uid = pod.get("uid") if isinstance(pod, dict) else None
    sub = claims.get("sub")
    return Identity(sub if isinstance(sub, str) else None, uid if isinstance(uid, str) else None)


def affected(event: Any, audiences: Sequence[str], holding: Callable[[str], str | None],
             identity: Identity) -> list[str]:
    """The audiences whose token a `revoked` event's data takes away."""
    if not isinstance(event, dict):
        return []
    kind, value = event.get("kind"), event.get("value")
    if not isinstance(value, str) or not value:
        return []
    if kind == "jti":
        audience = holding(value)
        return [audience] if audience else []
    if kind == "audience":
        return [value] if value in audiences else []
    if kind == "subject":
        return list(audiences) if identity.subject is not None and value == identity.subject else []
    if kind == "pod_uid":
        return list(audiences) if identity.pod_uid is not None and value == identity.pod_uid else []
    return []


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds before reconnecting after `failures` failed attempts in a row (0: at once-ish)."""
    if failures <= 0:
        return BACKOFF_INITIAL * rng.random()
    base = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1))
    return base / 2 + rng.random() * base / 2


class StreamRefused(Exception):
    pass


class RevocationSubscriber:
    def __init__(self, config: SidecarConfig, agent: RevocationTarget,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.agent = agent
        self.last_event_id: str | None = None
        self.connected = asyncio.Event()  # set while a stream is open (tests, readiness)
        self.applied = 0
        self.audiences = [a.audience for a in config.audiences]
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.request_timeout, read=READ_TIMEOUT), verify=config.tls_verify(),
            transport=transport,
            headers={"User-Agent": f"jitmesh-sidecar/{__version__}"})

    @property
    def url(self) -> str:
        return self.config.broker_url + EVENTS_PATH

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self) -> None:
        """Subscribe until cancelled."""
        failures = 0
        try:
            while True:
                try:
                    got_events = await self._stream_once()
                    failures = 0 if got_events else failures + 1
                    reason = "stream ended"
                except (httpx.HTTPError, SSEError, StreamRefused, OSError, UnicodeDecodeError) as exc:
                    failures += 1
                    reason = f"{type(exc).__name__}: {exc}"[:300]
                finally:
                    self.connected.clear()
                delay = backoff(failures, self._rng)
                log.info("events.reconnecting", reason=reason, failures=failures, retry_in=round(delay, 2),
                         last_event_id=self.last_event_id)
                await asyncio.sleep(delay)
        finally:
            await self.aclose()

    async def _stream_once(self) -> bool:
        """One connection; True when the broker answered with a stream."""
        sa_token = self.config.sa_token_file.read_text().strip()
        identity = identity_of(sa_token)
        headers = {"Authorization": f"Bearer {sa_token}"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        async with aconnect_sse(self._http, "GET", self.url, headers=headers) as source:
            if source.response.status_code != 200:
                body = (await source.response.aread())[:300].decode(errors="replace")
                raise StreamRefused(f"HTTP {source.response.status_code}: {body}")
            async for sse in source.aiter_sse():
                if sse.id:
                    self.last_event_id = sse.id
                if sse.event == "ready":
                    self.connected.set()
                    log.info("events.subscribed", last_event_id=self.last_event_id)
                elif sse.event in ("revoked", "lifted"):
                    self._apply(sse.data, identity)
                elif sse.event == "resync":
                    self._resync(sse.data, identity)
        return True

    def _holding(self, jti: str) -> str | None:
        for audience in self.audiences:
            held = self.agent.token(audience)
            if held is not None and held.jti == jti:
                return audience
        return None

    def _issued_before(self, audience: str, created_at: Any) -> bool:
        """Whether the token held for `audience` was issued at or before `created_at` (a token
        whose issue time is unknown counts as issued before)."""
        held = self.agent.token(audience)
        if held is None:
            return False
        if held.iat is None or not isinstance(created_at, (int, float)) or isinstance(created_at, bool):
            return True
        return held.iat <= created_at

    def _apply_doc(self, doc: Any, identity: Identity, source: str) -> None:
        hit = affected(doc, self.audiences, self._holding, identity)
        if hit and doc.get("lifted_at") is not None:  # lifted: only the tokens issued before it
            hit = [a for a in hit if self._issued_before(a, doc.get("created_at"))]
        for audience in hit:
            self.applied += 1
            self.agent.on_revoked(audience, reason=f"{doc.get('kind')} revoked (revocation {doc.get('id')}, {source})")

    def _apply(self, data: str, identity: Identity) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("events.bad_event", data=data[:200])
            return
        self._apply_doc(event, identity, "event")

    def _resync(self, data: str, identity: Identity) -> None:
        try:
            state = json.loads(data)
            revocations = state["revocations"]
            if not isinstance(revocations, list):
                raise TypeError("revocations is not a list")
        except (ValueError, TypeError, KeyError) as exc:
            # fail closed: without the state, no token held can be vouched for
            log.warning("events.bad_resync", error=str(exc)[:200], data=data[:200])
            for audience in self.audiences:
                self.agent.on_revoked(audience, reason="the broker's resynchronisation could not be read")
            return
        log.warning("events.resync", reason=str(state.get("reason"))[:200], revocations=len(revocations),
                    last_event_id=self.last_event_id)
        for doc in revocations:
            self._apply_doc(doc, identity, "resync")
