"""The credential agent: for every audience, a fresh token from the broker on disk and in memory.

Each audience runs one loop: read the projected ServiceAccount token (the kubelet rotates it,
so it is read on every request), exchange it at the broker, write the answer atomically, and
sleep until the next refresh, retry or poll. Independently of the loop, a timer removes a
token the moment it stops being valid: a token that expired without renewal is never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jitmesh.log import get_logger
from sidecar import files
from sidecar.broker import BrokerClient, DatabaseLogin, Failed, Issued, Outcome, Pending, RevokeFailed, jwt_claims
from sidecar.config import AudienceSpec, SidecarConfig
from sidecar.metrics import SidecarMetrics
from sidecar.schedule import poll_interval, refresh_delay, retry_delay

log = get_logger("sidecar")


@dataclass(frozen=True)
class HeldToken:
    access_token: str
    expires_at: float  # Unix time from which it is no longer served (exp minus the safety margin)
    scope: str
    jti: str | None
    iat: float | None = None  # when the broker issued it: a lifted revocation still covers it if made after
    login: DatabaseLogin | None = None  # a database login; access_token is its password


@dataclass
class _Audience:
    spec: AudienceSpec
    token: HeldToken | None = None
    failures: int = 0
    last_failure: str | None = None  # why the last request got no token, for /readyz and the probe
    access_request_id: str | None = None
    poll_every: float | None = None
    generation: int = 0  # bumped by a revocation, so an answer in flight is not trusted
    hold: float = 0.0  # seconds to wait before asking again after a revocation (jitter)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    expiry_timer: asyncio.TimerHandle | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Agent:
    def __init__(self, config: SidecarConfig, broker: BrokerClient, metrics: SidecarMetrics | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.broker = broker
        self.metrics = metrics or SidecarMetrics()
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not secrets
        self._clock = clock
        self._audiences = {a.audience: _Audience(a) for a in config.audiences}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- what the local API reads ------------------------------------------------

    def knows(self, audience: str) -> bool:
        return audience in self._audiences

    def token(self, audience: str) -> HeldToken | None:
        """The audience's token if it is still valid now, else None."""
        st = self._audiences.get(audience)
        if st is None or st.token is None or st.token.expires_at <= self._clock():
            return None
        return st.token

    def missing(self) -> list[str]:
        """Audiences without a valid token."""
        return [a for a in self._audiences if self.token(a) is None]

    def ready(self) -> bool:
        return not self.missing()

    def not_ready_because(self) -> dict[str, str]:
        """Why each audience without a valid token has none (the broker's last answer), as far as known."""
        return {a: st.last_failure or "no answer from the broker yet" for a, st in self._audiences.items()
                if self.token(a) is None}

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        files.prepare_token_dir(self.config.token_dir, self.config.file_mode, self.config.file_gid)
        for name, st in self._audiences.items():
            self.metrics.declare(name)
            files.remove_stale_temp_files(self.config.token_dir, name)
            # A file left by an earlier run may hold a token revoked meanwhile: fail closed, ask again.
            files.remove_token(self.config.token_dir, name)
            self._tasks.append(asyncio.create_task(self._run(st), name=f"audience:{name}"))
        log.info("sidecar.started", audiences=list(self._audiences), broker=self.config.broker_url,
                 token_dir=str(self.config.token_dir), ttl=self.config.ttl)

    async def shutdown(self) -> None:
        """Stop asking, remove every file, then revoke the tokens at the broker within the
        shutdown timeout. Files go first, so no reader picks up a token being revoked."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held: list[tuple[str, HeldToken]] = []
        for name, st in self._audiences.items():
            if st.token is not None:
                held.append((name, st.token))
            self._clear(st)
            files.remove_token(self.config.token_dir, name)
        if held:
            results = await asyncio.gather(*(self._revoke(name, tok) for name, tok in held))
            log.info("sidecar.stopped", revoked=sum(results), not_revoked=len(held) - sum(results))
        else:
            log.info("sidecar.stopped", revoked=0, not_revoked=0)
        await self.broker.aclose()

    async def _revoke(self, audience: str, token: HeldToken) -> bool:
        try:
            async with asyncio.timeout(self.config.shutdown_timeout):
                await self.broker.revoke(token.access_token, token.login)
        except (TimeoutError, RevokeFailed) as exc:
            log.warning("token.revoke_failed", audience=audience, jti=token.jti,
                        error=str(exc) or "timed out")
            return False
        log.info("token.revoked_at_broker", audience=audience, jti=token.jti)
        return True

    # -- the seam for revocation events (docs/contract.md §5) -------------------------------

    @property
    def audiences(self) -> list[str]:
        return list(self._audiences)

    def audience_holding(self, jti: str) -> str | None:
        """The audience whose current token has this `jti`, for events that name a token."""
        return next((name for name, st in self._audiences.items() if st.token and st.token.jti == jti), None)

    def on_revoked(self, audience: str, reason: str = "") -> None:
        """A revocation event named this audience's token, its subject or its pod: the file
        goes at once and the audience asks the broker again after a random delay of up to
        `reask_jitter` seconds. An audience-wide revocation reaches every sidecar in the same
        instant; without the jitter they would all ask at once, and that burst of requests
        would slow the removals still under way on the same CPUs. Call it on the agent's
        event loop (an event consumer there); for a subject or pod event, call it
        for every audience."""
        st = self._audiences.get(audience)
        if st is None or self._stopping:
            return
        st.generation += 1
        had = st.token
        self._clear(st)
        removed = files.remove_token(self.config.token_dir, audience)
        st.failures = 0
        st.hold = self._rng.uniform(0.0, self.config.reask_jitter)
        if had is None and not removed:  # nothing was held: say so, rather than that a file went
            log.info("revocation.noted", audience=audience, reason=reason, held_token=False,
                     ask_again_in=round(st.hold, 3))
        else:
            self.metrics.revoked.labels(audience).inc()
            log.warning("token.revoked", audience=audience, jti=had.jti if had else None, reason=reason,
                        ask_again_in=round(st.hold, 3))
        st.wake.set()

    # -- one audience ----------------------------------------------------------------

    async def _run(self, st: _Audience) -> None:
        while not self._stopping:
            st.wake.clear()
            if st.hold > 0:  # just revoked: the file is gone; spread the fleet's requests
                hold, st.hold = st.hold, 0.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(hold):
                        await st.wake.wait()
                continue  # a newer revocation may have set another hold
            try:
                delay = await self._attempt(st)
            except Exception as exc:  # a bug must not end the audience's loop
                log.error("sidecar.internal_error", exc_info=True, audience=st.spec.audience)
                delay = self._failed(st, Failed("internal_error", f"{type(exc).__name__}: {exc}"))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # coincides with the wake-up, and shutdown would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await st.wake.wait()

    async def _attempt(self, st: _Audience) -> float:
        """Ask once; return the seconds until the next request."""
        name = st.spec.audience
        generation = st.generation
        try:
            subject_token = self.config.sa_token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            return self._failed(st, Failed("subject_token_unreadable",
                                           f"{self.config.sa_token_file}: {getattr(exc, 'strerror', None) or exc}"))
        if not subject_token:
            return self._failed(st, Failed("subject_token_unreadable", f"{self.config.sa_token_file} is empty"))
        held = self.token(name)
        refresh_login = held.login.username if held is not None and held.login is not None else None
        outcome: Outcome = await self.broker.exchange(st.spec, subject_token, st.access_request_id, refresh_login)
        if generation != st.generation:
            return 0.0  # revoked while we were asking: this answer may predate the revocation
        if isinstance(outcome, Issued):
            return self._issued(st, outcome)
        if isinstance(outcome, Pending):
            st.access_request_id = outcome.access_request_id or st.access_request_id
            st.poll_every = poll_interval(outcome.interval, st.poll_every, outcome.slow_down)
            self.metrics.pending.labels(name).inc()
            st.last_failure = f"authorization_pending: access request {st.access_request_id} awaits a human approval"
            log.info("token.pending", audience=name, access_request_id=st.access_request_id,
                     retry_in=round(st.poll_every, 1), detail=outcome.description)
            return st.poll_every
        return self._failed(st, outcome)

    def _issued(self, st: _Audience, issued: Issued) -> float:
        name = st.spec.audience
        now = self._clock()
        expires_at = issued.expires_at - self.config.expiry_margin
        if expires_at <= now:
            return self._failed(st, Failed("token_too_short", f"token expires within the "
                                           f"{self.config.expiry_margin:g}s safety margin"))
        try:
            if issued.login is not None:
                lg = issued.login
                files.write_login(self.config.token_dir, name,
                                  files.login_uri(lg.username, issued.access_token, lg.host, lg.port, lg.dbname,
                                                  lg.sslmode),
                                  files.pgpass_line(lg.username, issued.access_token, lg.host, lg.port, lg.dbname),
                                  self.config.file_mode, self.config.file_gid)
            else:
                files.write_token(self.config.token_dir, name, issued.access_token, self.config.file_mode,
                                  self.config.file_gid)
        except OSError as exc:
            return self._failed(st, Failed("write_failed", f"{self.config.token_dir}: {exc.strerror or exc}"))
        refreshed = self.token(name) is not None
        iat = jwt_claims(issued.access_token).get("iat") if issued.login is None else now
        issued_at = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None
        self._set(st, HeldToken(issued.access_token, expires_at, issued.scope, issued.jti, issued_at, issued.login))
        st.failures = 0
        st.last_failure = None
        st.access_request_id = None
        st.poll_every = None
        self.metrics.refreshes.labels(name).inc()
        delay = refresh_delay(expires_at - now, self.config.refresh_after, self._rng)
        log.info("token.refreshed" if refreshed else "token.issued", audience=name, scope=issued.scope,
                 expires_in=round(expires_at - now, 1), expires_at=_iso(expires_at), jti=issued.jti,
                 decision_id=issued.decision_id, refresh_in=round(delay, 1))
        return delay

    def _failed(self, st: _Audience, failure: Failed) -> float:
        name = st.spec.audience
        st.failures += 1
        st.last_failure = f"{failure.reason}: {failure.description}" if failure.description else failure.reason
        self.metrics.failures.labels(name, failure.reason).inc()
        delay = retry_delay(st.failures, self.config.backoff_initial, self.config.backoff_max, self._rng,
                            failure.retry_after)
        held = self.token(name)
        fields = {"audience": name, "reason": failure.reason, "status": failure.status,
                  "failures": st.failures, "retry_in": round(delay, 2),
                  "token_valid_for": round(held.expires_at - self._clock(), 1) if held else None}
        if failure.reason == "access_denied":
            log.warning("token.denied", reasons=failure.description, decision_id=failure.decision_id, **fields)
        else:
            log.warning("token.refresh_failed", detail=failure.description, **fields)
        return delay

    # -- state and the expiry timer ------------------------------------------------------

    def _set(self, st: _Audience, token: HeldToken) -> None:
        if st.expiry_timer is not None:
            st.expiry_timer.cancel()
        st.token = token
        loop = asyncio.get_running_loop()
        st.expiry_timer = loop.call_later(max(0.0, token.expires_at - self._clock()), self._expire, st, token)
        self.metrics.token_set(st.spec.audience, token.expires_at)

    def _clear(self, st: _Audience) -> None:
        if st.expiry_timer is not None:
            st.expiry_timer.cancel()
            st.expiry_timer = None
        st.token = None
        self.metrics.token_cleared(st.spec.audience)

    def _expire(self, st: _Audience, token: HeldToken) -> None:
        if st.token is not token:
            return
        # Timers may fire a little early or late; if early, wait for the real moment.
        remaining = token.expires_at - self._clock()
        if remaining > 0:
            st.expiry_timer = asyncio.get_running_loop().call_later(remaining, self._expire, st, token)
            return
        self._clear(st)
        files.remove_token(self.config.token_dir, st.spec.audience)
        self.metrics.expired.labels(st.spec.audience).inc()
        log.warning("token.expired", audience=st.spec.audience, jti=token.jti,
                    detail="not renewed in time; file removed")
