"""The revocation index and admin tokens, with a memory store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pdp.admin.tokens import AdminTokens, parse_admin_tokens
from pdp.revocation.index import EXPIRED_GRACE, RevocationIndex, RevocationIndexStale
from pdp.store.base import Revocation, RevocationKind
from tests.fixtures.broker import MemoryStore


def rev(rid: str, kind: RevocationKind, value: str) -> Revocation:
    return Revocation(id=rid, kind=kind, value=value, reason="r", created_at=1.0, created_by="t")


def test_loaded_index_refuses_revoked_subject_pod_and_audience() -> None:
    store = MemoryStore()
    for r in (rev("1", "subject", "s"), rev("2", "pod_uid", "p"), rev("3", "audience", "a")):
        asyncio.run(store.add_revocation(r))
    index = RevocationIndex(store)
    asyncio.run(index.load())
    assert index.refusal("s", None, "x") is not None
    assert index.refusal("x", "p", "x") is not None
    assert index.refusal("x", None, "a") is not None
    assert index.refusal("x", "y", "z") is None


def test_index_follows_revoked_and_lifted_events() -> None:
    store = MemoryStore()
    index = RevocationIndex(store)
    asyncio.run(index.load())
    asyncio.run(store.add_revocation(rev("1", "subject", "s")))
    asyncio.run(index.refresh())
    assert index.refusal("s", None, "a") is not None
    asyncio.run(store.lift_revocation("1", "admin", 2.0))
    asyncio.run(index.refresh())
    assert index.refusal("s", None, "a") is None


def test_lifting_one_of_two_revocations_of_a_value_keeps_it_revoked() -> None:
    index = RevocationIndex(MemoryStore())
    index.add(rev("1", "subject", "s"))
    index.add(rev("2", "subject", "s"))
    index.remove("1")
    assert index.refusal("s", None, "a") is not None


def test_token_revoked_by_jti_or_by_its_subject() -> None:
    index = RevocationIndex(MemoryStore())
    index.add(rev("1", "jti", "j"))
    index.add(rev("2", "subject", "s2"))
    assert index.token_revoked({"jti": "j", "sub": "s", "aud": "a"}) is not None
    assert index.token_revoked({"jti": "k", "sub": "s2", "aud": "a"}) is not None
    assert index.token_revoked({"jti": "k", "sub": "s", "aud": "a"}) is None


def test_purge_forgets_revocations_of_tokens_expired_past_the_grace_in_the_store_and_the_index() -> None:
    store = MemoryStore()
    now = 100_000.0
    expired = Revocation(id="old", kind="jti", value="j-old", reason="r", created_at=1.0, created_by="t",
                         expires_at=now - EXPIRED_GRACE - 1)
    recent = Revocation(id="recent", kind="jti", value="j-recent", reason="r", created_at=1.0, created_by="t",
                        expires_at=now - EXPIRED_GRACE + 1)  # expired, but within the grace: still refused
    for r in (expired, recent, rev("s", "subject", "s")):
        asyncio.run(store.add_revocation(r))
    index = RevocationIndex(store)
    asyncio.run(index.load())
    assert index.token_revoked({"jti": "j-old", "sub": "x", "aud": "a"}) is not None
    assert asyncio.run(index.purge(now)) == 1
    assert index.token_revoked({"jti": "j-old", "sub": "x", "aud": "a"}) is None
    assert index.token_revoked({"jti": "j-recent", "sub": "x", "aud": "a"}) is not None
    assert index.refusal("s", None, "a") is not None
    assert sorted(store.revocations) == ["recent", "s"]
    assert [e.revocation.id for e in store.events] == ["recent", "s"]


def test_load_starts_after_the_newest_event_without_reading_the_log() -> None:
    store = MemoryStore()
    for i in range(5):
        asyncio.run(store.add_revocation(rev(str(i), "subject", f"s{i}")))
    read: list[int] = []
    original = store.revocation_events

    async def counting(after_seq: int = 0, limit: int = 1000) -> list[Any]:
        read.append(after_seq)
        return await original(after_seq, limit)
    store.revocation_events = counting  # type: ignore[method-assign]
    index = RevocationIndex(store)
    asyncio.run(index.load())
    assert index.seq == 5 and read == []


def test_never_loaded_index_is_stale() -> None:
    with pytest.raises(RevocationIndexStale):
        RevocationIndex(MemoryStore()).check_fresh()


def test_admin_token_file_ignores_blank_lines_and_comments() -> None:
    assert parse_admin_tokens("# ops\n\n  tok-1  \n#tok-2\ntok-3\n") == ("tok-1", "tok-3")


def test_admin_bearer_token_is_recognised_and_others_are_not(tmp_path: Path) -> None:
    path = tmp_path / "admins"
    path.write_text("# comment\nsecret-1\n")
    admins = AdminTokens(path)
    assert admins.is_admin("Bearer secret-1")
    assert not admins.is_admin("Bearer secret-")
    assert not admins.is_admin("Basic secret-1")
    assert not admins.is_admin("Bearer # comment")
    assert not admins.is_admin(None)


def test_admin_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "admins"
    path.write_text("old\n")
    admins = AdminTokens(path)
    path.write_text("new-token\n")
    assert admins.is_admin("Bearer new-token") and not admins.is_admin("Bearer old")


def test_no_admin_token_file_means_no_admins() -> None:
    assert not AdminTokens(None).is_admin("Bearer anything")


def test_access_requests_are_purged_a_month_after_they_lapsed_or_ran_out() -> None:
    from pdp.approvals import api as approvals_api
    from pdp.store.base import AccessRequest

    store = MemoryStore()
    now = 100 * 86400.0
    for rid, ran_out in (("old", now - approvals_api.RETENTION_SECONDS - 1),
                         ("recent", now - approvals_api.RETENTION_SECONDS + 1)):
        asyncio.run(store.add_access_request(AccessRequest(id=rid, subject="s", audience="a", scopes=(),
                                                           created_at=1.0, expires_at=ran_out)))
    assert asyncio.run(approvals_api.purge(store, now)) == 1
    assert list(store.access_requests) == ["recent"]


def claims(iat: float, **extra: Any) -> dict[str, Any]:
    return {"jti": "j", "sub": "s", "aud": "a", "iat": iat, **extra}


@pytest.mark.parametrize(("kind", "value", "token"), [
    ("subject", "s", {}), ("audience", "a", {}), ("pod_uid", "p", {"kubernetes.io": {"pod": {"uid": "p"}}}),
    ("jti", "j", {})])
def test_a_lifted_revocation_still_revokes_tokens_issued_before_it_but_not_after(
        kind: RevocationKind, value: str, token: dict[str, Any]) -> None:
    now = 10_000.0
    store = MemoryStore()
    index = RevocationIndex(store, max_token_ttl=3600, clock=lambda: now)
    r = Revocation(id="1", kind=kind, value=value, reason="r", created_at=now - 100, created_by="t")
    asyncio.run(store.add_revocation(r))
    asyncio.run(index.load())
    asyncio.run(store.lift_revocation("1", "admin", now - 50))
    asyncio.run(index.refresh())
    assert index.refusal("s", "p", "a") is None                          # issuance re-opened
    assert index.token_revoked(claims(now - 100, **token)) is not None   # issued at the revocation's second
    assert index.token_revoked(claims(now - 3000, **token)) is not None  # long before
    assert index.token_revoked({"jti": "j", "sub": "s", "aud": "a", **token}) is not None  # no iat: fail closed
    if kind != "jti":
        assert index.token_revoked(claims(now - 40, jti="new", **token)) is None  # issued after the lift


def test_a_lift_made_on_this_replica_keeps_covering_older_tokens_until_its_event_arrives() -> None:
    index = RevocationIndex(MemoryStore(), clock=lambda: 1_000.0)
    index.add(Revocation(id="1", kind="subject", value="s", reason="r", created_at=900.0, created_by="t"))
    index.remove("1")
    assert index.refusal("s", None, "a") is None
    assert index.token_revoked(claims(899.0)) is not None


def test_a_restarted_index_loads_the_lifted_revocations_whose_tokens_may_be_unexpired() -> None:
    now = 100_000.0
    store = MemoryStore()
    for rid, created in (("recent", now - 600), ("old", now - 3600 - EXPIRED_GRACE - 10)):
        asyncio.run(store.add_revocation(Revocation(id=rid, kind="subject", value=rid, reason="r",
                                                    created_at=created, created_by="t")))
        asyncio.run(store.lift_revocation(rid, "admin", now - 1))
    index = RevocationIndex(store, max_token_ttl=3600, clock=lambda: now)
    asyncio.run(index.load())
    assert index.token_revoked({"jti": "x", "sub": "recent", "aud": "a", "iat": now - 700}) is not None
    assert index.token_revoked({"jti": "x", "sub": "old", "aud": "a", "iat": now - 7300}) is None
    assert [r.id for r in index.in_force()] == ["recent"]


def test_purge_keeps_a_lifted_revocation_until_every_token_it_covers_has_expired() -> None:
    day = 86400.0
    store = MemoryStore()
    r = Revocation(id="1", kind="subject", value="s", reason="r", created_at=0.0, created_by="t")
    asyncio.run(store.add_revocation(r))
    asyncio.run(store.lift_revocation("1", "admin", 10.0))
    long_lived = RevocationIndex(store, max_token_ttl=40 * day, clock=lambda: 35 * day)
    asyncio.run(long_lived.load())
    assert asyncio.run(long_lived.purge(35 * day)) == 0  # a 40-day token issued before it may be alive
    assert long_lived.token_revoked(claims(-1.0)) is not None
    assert asyncio.run(long_lived.purge(41 * day)) == 1
