"""A started broker's database logins: the targets' admin pools, the end of each login at its
expiry, on a revocation of its jti, subject, pod or audience, and the sweep (at start, then
hourly) that ends every expired, revoked or unrecorded login with the broker's prefix."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import re
import time
from collections.abc import Callable, Mapping

from jitmesh.log import get_logger
from pdp.dblogins.metrics import LoginMetrics
from pdp.dblogins.postgres import PREFIX, ExistingLogin, LoginOwner, LoginUnavailable, PostgresLogins
from pdp.dblogins.sweep import DEFAULT_ENDS_PER_SECOND, SWEEP_EVERY, RateLimit, verdict
from pdp.dblogins.targets import Targets
from pdp.revocation.events import Subscription
from pdp.revocation.index import RevocationIndex
from pdp.store.base import Revocation, RevocationEvent, Store, StoreError

log = get_logger("pdp.dblogins")

ISSUED_EVENTS = ("issued", "dry_run_allowed")  # the audit events of a login handed out
EXPIRY_CHECK_MAX = 5.0  # the expiry task looks at least this often, so a login made elsewhere is not missed long
_JTI = re.compile(r"[0-9a-f]{32}")  # a login's jti; any other jti is a JWT's


class DatabaseLogins:
    """Every target's logins; the exchange issues through `targets`, the app runs `run_*`."""

    def __init__(self, targets: Targets, store: Store, revocations: RevocationIndex,
                 clock: Callable[[], float] = time.time, ends_per_second: float = DEFAULT_ENDS_PER_SECOND,
                 sweep_every: float = SWEEP_EVERY, metrics: LoginMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else LoginMetrics()
        self.targets: Mapping[str, PostgresLogins] = {aud: PostgresLogins(t, self.metrics)
                                                      for aud, t in targets.postgresql.items()}
        self.metrics.watch_pools({aud: logins.pool.get_stats for aud, logins in self.targets.items()})
        self.store = store
        self.revocations = revocations
        self.clock = clock
        self.rate = RateLimit(ends_per_second)
        self.sweep_every = sweep_every
        self._expiries: list[tuple[float, str, str]] = []  # (expires_at, audience, username)
        self._wake = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self.targets)

    async def open(self) -> None:
        for logins in self.targets.values():
            await logins.open()

    async def close(self) -> None:
        for logins in self.targets.values():
            await logins.close()

    def handed_out(self, audience: str, username: str, expires_at: float, refreshed: bool) -> None:
        """A login was issued (or refreshed) and recorded: count it, and end it at its expiry."""
        self.metrics.issued.labels(audience, "true" if refreshed else "false").inc()
        self.issued(audience, username, expires_at)

    def issued(self, audience: str, username: str, expires_at: float) -> None:
        """Remember a login's expiry so that it ends then, not at the next sweep."""
        heapq.heappush(self._expiries, (expires_at, audience, username))
        self._wake.set()

    async def end(self, audience: str, username: str, why: str, limited: bool = True) -> bool:
        """End one login; expiries and the sweep wait their turn under the rate limit, a
        revocation (an admin's explicit act) does not."""
        logins = self.targets[audience]
        if limited:
            await self.rate.wait()
        try:
            ended = await logins.end(username)
        except LoginUnavailable as exc:
            log.warning("dblogin.end_failed", audience=audience, username=username, why=why, error=str(exc))
            return False
        if ended:
            self.metrics.ended.labels(audience, why).inc()
            log.info("dblogin.dropped", audience=audience, username=username, why=why)
        return ended

    # --- expiry ----------------------------------------------------------------------------
    async def run_expiry(self) -> None:
        """End each login this broker knows of at its expiry."""
        while True:
            now = self.clock()
            while self._expiries and self._expiries[0][0] <= now:
                _, audience, username = heapq.heappop(self._expiries)
                login = await self._current(audience, username)
                if login is not None and login.owner is not None and login.owner.expires_at > now:
                    self.issued(audience, username, login.owner.expires_at)  # refreshed meanwhile
                    continue
                if login is not None:
                    await self.end(audience, username, "expired")
            delay = min(EXPIRY_CHECK_MAX, self._expiries[0][0] - now) if self._expiries else EXPIRY_CHECK_MAX
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, delay))

    async def _current(self, audience: str, username: str) -> ExistingLogin | None:
        try:
            return await self.targets[audience].get(username[len(PREFIX):])
        except LoginUnavailable as exc:
            log.warning("dblogin.read_failed", audience=audience, username=username, error=str(exc))
            return None

    # --- revocation ------------------------------------------------------------------------
    async def held(self, username: str, password: str) -> LoginOwner | None:
        """The owner of login `username` when `password` is its current password (its holder
        asks to revoke it, RFC 7009); None for anything else. LoginUnavailable when a target
        that may hold it cannot be asked."""
        jti = username[len(PREFIX):] if username.startswith(PREFIX) else ""
        if not _JTI.fullmatch(jti):
            return None
        for audience, logins in self.targets.items():
            login = await logins.get(jti)
            owner = login.owner if login is not None else None
            if owner is not None and owner.audience == audience and owner.password_is(password):
                return owner
        return None

    def _matches(self, revocation: Revocation, audience: str, login: ExistingLogin) -> bool:
        owner = login.owner
        if owner is None:
            return False
        value = revocation.value
        return {"jti": owner.jti == value, "subject": owner.subject == value,
                "pod_uid": owner.pod_uid == value, "audience": audience == value}.get(revocation.kind, False)

    async def revoked(self, revocation: Revocation) -> int:
        """End every login the revocation covers; how many ended."""
        ended = 0
        for audience, logins in self.targets.items():
            if revocation.kind == "audience" and revocation.value != audience:
                continue
            if revocation.kind == "jti":  # the role's name says it all: no listing
                if revocation.audience in (None, audience) and _JTI.fullmatch(revocation.value):
                    ended += await self.end(audience, PREFIX + revocation.value, "revoked", limited=False)
                continue
            try:
                found = await logins.list()
            except LoginUnavailable as exc:  # the next sweep, or the next event, tries again
                log.warning("dblogin.revocation_failed", audience=audience, revocation_id=revocation.id,
                            error=str(exc))
                continue
            bound = asyncio.Semaphore(logins.target.admin_pool)  # no more at once than the pool serves

            async def end_one(username: str, audience: str = audience, bound: asyncio.Semaphore = bound) -> bool:
                async with bound:
                    return await self.end(audience, username, "revoked", limited=False)
            done = await asyncio.gather(*(end_one(login.username) for login in found
                                          if self._matches(revocation, audience, login)))
            ended += sum(done)
        return ended

    async def follow(self, subscription: Subscription) -> None:
        """End logins as revocations arrive (from the broker's event hub). Events dropped
        because this fell behind are made good by a sweep against the revocation list."""
        while True:
            event = await subscription.queue.get()
            if event is None:
                return
            if isinstance(event, RevocationEvent) and event.action == "revoked":
                await self.revoked(event.revocation)
            if subscription.overflowed and subscription.queue.empty():
                subscription.overflowed = False
                log.warning("dblogin.revocations_overflowed", message="fell behind the revocation events; sweeping")
                await self.sweep()

    # --- the sweep -------------------------------------------------------------------------
    async def _recorded(self, owner: LoginOwner) -> bool | None:
        """Whether the issuance of this login (or its last refresh) was audited."""
        try:
            records = await self.store.query_audit(decision_id=owner.decision_id, limit=20)
        except StoreError:
            return None  # cannot say: keep it until the store answers
        return any(r.jti == owner.jti and r.event in ISSUED_EVENTS for r in records)

    async def sweep(self) -> int:
        """End every expired, revoked, unrecorded or unreadable login on every target."""
        ended = 0
        now = self.clock()
        for audience, logins in self.targets.items():
            try:
                found = await logins.list()
            except LoginUnavailable as exc:
                log.warning("dblogin.sweep_failed", audience=audience, error=str(exc))
                continue
            grace = logins.target.unrecorded_grace
            for login in found:
                owner = login.owner
                revoked = owner is not None and self.revocations.token_revoked(owner.claims()) is not None
                recorded = (await self._recorded(owner)
                            if owner is not None and now - owner.issued_at >= grace else None)
                why = verdict(login, now, revoked, recorded, grace)
                if why is not None:
                    if await self.end(audience, login.username, why):
                        ended += 1
                        self.metrics.swept.labels(audience, why).inc()
                elif owner is not None:
                    self.issued(audience, login.username, owner.expires_at)
        if ended:
            log.info("dblogin.swept", ended=ended)
        return ended

    async def run_sweeps(self) -> None:
        """Sweep at start, again once the unrecorded grace has passed (a role a crash left
        moments before this start is too young for the first), then every `sweep_every`."""
        delays = [max((t.target.unrecorded_grace for t in self.targets.values()), default=0.0) + 1.0]
        while True:
            try:
                await self.sweep()
            except Exception:
                log.error("dblogin.sweep_failed", exc_info=True)
            await asyncio.sleep(delays.pop() if delays else self.sweep_every)
