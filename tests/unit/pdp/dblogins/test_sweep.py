"""The sweep's verdict on one login, and its rate limit."""

from __future__ import annotations

import asyncio

from pdp.dblogins.postgres import ExistingLogin, LoginOwner
from pdp.dblogins.sweep import UNRECORDED_GRACE, RateLimit, verdict

NOW = 1_000_000.0


def login(issued_ago: float = 10.0, ttl: float = 300.0, valid_until: float | None = None,
          readable: bool = True) -> ExistingLogin:
    owner = LoginOwner(jti="a" * 32, subject="system:serviceaccount:orders:api", pod_uid=None, audience="orders-db",
                       scopes=("read",), decision_id="d", issued_at=NOW - issued_ago,
                       expires_at=NOW - issued_ago + ttl)
    return ExistingLogin(username="jitmesh_login_" + "a" * 32,
                         valid_until=valid_until if valid_until is not None else owner.expires_at,
                         owner=owner if readable else None)


def test_a_live_recorded_login_stays() -> None:
    assert verdict(login(), NOW, revoked=False, recorded=True) is None


def test_an_expired_login_ends() -> None:
    assert verdict(login(issued_ago=400), NOW, revoked=False, recorded=True) == "expired"


def test_a_role_whose_valid_until_passed_ends_even_if_its_comment_says_later() -> None:
    assert verdict(login(valid_until=NOW - 1), NOW, revoked=False, recorded=True) == "expired"


def test_a_revoked_login_ends() -> None:
    assert verdict(login(), NOW, revoked=True, recorded=True) == "revoked"


def test_an_unrecorded_login_past_the_grace_ends() -> None:
    assert verdict(login(issued_ago=UNRECORDED_GRACE + 1, ttl=3600), NOW, False, recorded=False) == "unrecorded"


def test_a_young_unrecorded_login_stays_as_its_issuance_may_still_be_recording_it() -> None:
    assert verdict(login(issued_ago=1), NOW, revoked=False, recorded=False) is None


def test_a_login_the_store_could_not_be_asked_about_stays() -> None:
    assert verdict(login(issued_ago=UNRECORDED_GRACE + 1, ttl=3600), NOW, False, recorded=None) is None


def test_a_role_without_a_readable_comment_ends() -> None:
    assert verdict(login(readable=False), NOW, revoked=False, recorded=None) == "unreadable"


def test_the_rate_limit_spaces_starts_evenly() -> None:
    t = [0.0]
    slept: list[float] = []

    async def run() -> None:
        limit = RateLimit(per_second=10, clock=lambda: t[0])
        original = asyncio.sleep

        async def fake_sleep(delay: float) -> None:
            slept.append(delay)
            await original(0)
        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(3):
                await limit.wait()
        finally:
            asyncio.sleep = original
    asyncio.run(run())
    assert [round(d, 3) for d in slept] == [0.1, 0.2]
