"""Which broker logins must end, and at what pace: the pure verdict on one login and the
rate limit that keeps thousands of expiries from becoming a storm of admin statements."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pdp.dblogins.postgres import ExistingLogin
from pdp.dblogins.targets import DEFAULT_UNRECORDED_GRACE

SWEEP_EVERY = 3600.0
DEFAULT_ENDS_PER_SECOND = 20.0
# a role this young may be an issuance still writing its audit record, on this or another replica
UNRECORDED_GRACE = DEFAULT_UNRECORDED_GRACE


def verdict(login: ExistingLogin, now: float, revoked: bool, recorded: bool | None,
            grace: float = UNRECORDED_GRACE) -> str | None:
    """Why `login` must end now ("expired", "revoked", "unrecorded", "unreadable"), or None.
    `recorded` is None when the store was not asked (the login is young or judged already)."""
    if login.owner is None:
        return "unreadable"  # no comment: not made whole by this broker, so no one can vouch for it
    until = login.valid_until if login.valid_until is not None else login.owner.expires_at
    if min(until, login.owner.expires_at) <= now:
        return "expired"
    if revoked:
        return "revoked"
    if recorded is False and now - login.owner.issued_at >= grace:
        return "unrecorded"
    return None


@dataclass
class RateLimit:
    """At most `per_second` starts, spaced evenly; `wait()` sleeps until the next is due."""

    per_second: float
    clock: Callable[[], float] = time.monotonic
    _next: float = 0.0

    async def wait(self) -> None:
        now = self.clock()
        delay = self._next - now
        self._next = max(now, self._next) + 1.0 / self.per_second
        if delay > 0:
            await asyncio.sleep(delay)
