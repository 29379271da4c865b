"""The store contract (pdp/store/base.py), pinned once and run against SQLite and a real
PostgreSQL server: whatever the broker relies on holds for both."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from jitmesh.procs import free_port
from pdp.store import AccessRequest, AuditRecord, Revocation, SigningKey, Store, StoreError, open_store_from_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("postgres_url"))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = open_store_from_url(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def with_store(url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with opened(url) as store:
            return await body(store)
    return run(main())


def key(kid: str, created_at: float, retired_at: float | None = None) -> SigningKey:
    return SigningKey(kid=kid, private_pem=f"-----PEM {kid}-----\n".encode(), created_at=created_at,
                      retired_at=retired_at)


def record(n: int = 0, **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {"decision_id": f"d-{n}", "time": 1000.0 + n, "event": "issued",
                              "subject": "system:serviceaccount:payments:api", "audience": "orders-db",
                              "policy_path": "jitmesh/authz/decision", "details": {"n": n}}
    values.update(fields)
    return AuditRecord(**values)


def revocation(kind: str = "subject", value: str = "system:serviceaccount:payments:api",
               rid: str | None = None) -> Revocation:
    return Revocation(id=rid or uuid.uuid4().hex, kind=kind, value=value, reason="compromised",  # type: ignore[arg-type]
                      created_at=time.time(), created_by="admin:alice")


# signing keys

def test_added_keys_are_listed_oldest_first(store_url: str) -> None:
    async def body(s: Store) -> list[SigningKey]:
        await s.add_key(key("b", 200.0))
        await s.add_key(key("a", 100.0))
        return await s.list_keys()
    assert with_store(store_url, body) == [key("a", 100.0), key("b", 200.0)]


def test_retired_key_carries_its_retirement_and_publication_window(store_url: str) -> None:
    async def body(s: Store) -> list[SigningKey]:
        await s.add_key(key("a", 100.0))
        await s.retire_key("a", 150.0, 500.0)
        return await s.list_keys()
    [k] = with_store(store_url, body)
    assert (k.retired_at, k.publish_until) == (150.0, 500.0)


def test_deleted_key_is_no_longer_listed(store_url: str) -> None:
    async def body(s: Store) -> list[SigningKey]:
        await s.add_key(key("a", 100.0))
        await s.add_key(key("b", 200.0))
        await s.delete_key("a")
        return await s.list_keys()
    assert [k.kid for k in with_store(store_url, body)] == ["b"]


def test_adding_a_kid_twice_is_a_store_error(store_url: str) -> None:
    async def body(s: Store) -> None:
        await s.add_key(key("a", 100.0))
        with pytest.raises(StoreError, match="'a' already exists"):
            await s.add_key(key("a", 200.0))
    with_store(store_url, body)


def test_keys_survive_reopening_the_store(store_url: str) -> None:
    with_store(store_url, lambda s: s.add_key(key("a", 100.0)))
    assert with_store(store_url, lambda s: s.list_keys()) == [key("a", 100.0)]


def test_rotate_key_retires_an_old_key_and_stores_the_new_one(store_url: str) -> None:
    async def body(s: Store) -> tuple[SigningKey, list[SigningKey]]:
        await s.add_key(key("old", 100.0))
        got = await s.rotate_key(key("new", 1000.0), rotate_if_older_than=900.0, publish_until=2000.0)
        return got, await s.list_keys()
    got, keys = with_store(store_url, body)
    assert got == key("new", 1000.0)
    assert keys == [SigningKey("old", key("old", 0).private_pem, 100.0, 1000.0, 2000.0), key("new", 1000.0)]


def test_rotate_key_keeps_a_key_that_is_fresh_enough(store_url: str) -> None:
    async def body(s: Store) -> tuple[SigningKey, list[SigningKey]]:
        await s.add_key(key("current", 950.0))
        got = await s.rotate_key(key("new", 1000.0), rotate_if_older_than=900.0, publish_until=2000.0)
        return got, await s.list_keys()
    got, keys = with_store(store_url, body)
    assert got == key("current", 950.0)
    assert keys == [key("current", 950.0)]


def test_two_replicas_rotating_at_once_agree_on_one_key(store_url: str) -> None:
    async def main() -> tuple[list[SigningKey], list[SigningKey]]:
        async with opened(store_url) as a, opened(store_url) as b:
            await a.add_key(key("old", 100.0))
            results = []
            for attempt in range(5):  # several rounds to give a race every chance
                now = 1000.0 * (attempt + 1)
                results += await asyncio.gather(
                    a.rotate_key(key(f"a{attempt}", now), rotate_if_older_than=now - 500, publish_until=now + 3600),
                    b.rotate_key(key(f"b{attempt}", now), rotate_if_older_than=now - 500, publish_until=now + 3600))
            return results, await a.list_keys()
    results, keys = run(main())
    for first, second in zip(results[::2], results[1::2], strict=True):
        assert first.kid == second.kid
    assert [k.kid for k in keys if k.retired_at is None] == [results[-1].kid]
    assert len(keys) == 6  # old + exactly one new key per round


# audit

def test_append_audit_returns_the_record_with_an_increasing_seq(store_url: str) -> None:
    async def body(s: Store) -> list[AuditRecord]:
        return [await s.append_audit(record(n)) for n in range(3)]
    written = with_store(store_url, body)
    seqs = [r.seq for r in written]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and all(isinstance(q, int) for q in seqs)
    assert [w.decision_id for w in written] == ["d-0", "d-1", "d-2"]


def test_concurrent_appends_all_land_with_distinct_seqs(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[AuditRecord], list[AuditRecord]]:
        written = await asyncio.gather(*(s.append_audit(record(n)) for n in range(300)))
        return list(written), await s.query_audit(limit=1000)
    written, stored = with_store(store_url, body)
    assert len({r.seq for r in written}) == 300
    assert sorted(r.seq for r in written) == [r.seq for r in stored]
    assert {r.decision_id: r.seq for r in written} == {r.decision_id: r.seq for r in stored}


def test_a_bad_record_among_concurrent_appends_fails_alone(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[Any], list[AuditRecord]]:
        results = await asyncio.gather(
            *(s.append_audit(record(n, subject="bad\x00subject" if n == 5 else "ok")) for n in range(20)),
            return_exceptions=True)
        return list(results), await s.query_audit(limit=100)
    results, stored = with_store(store_url, body)
    assert isinstance(results[5], StoreError) and "NUL" in str(results[5])
    assert len(stored) == 19


def test_a_record_the_database_refuses_among_concurrent_appends_fails_alone(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[Any], list[AuditRecord]]:
        results = await asyncio.gather(*(s.append_audit(record(n, time=None if n == 7 else 1000.0 + n))
                                         for n in range(20)), return_exceptions=True)
        return list(results), await s.query_audit(limit=100)
    results, stored = with_store(store_url, body)
    assert isinstance(results[7], StoreError)
    assert [r.decision_id for r in stored] == [f"d-{n}" for n in range(20) if n != 7]


def test_audit_details_round_trip_as_json(store_url: str) -> None:
    details = {"requested_scopes": ["read", "write"], "granted": ["read"], "ttl": 300, "ratio": 0.25,
               "reasons": ["ünïcode ✓", 'quote " and \\ backslash'], "approval": None, "ok": True,
               "input": {"subject": {"pod": {"labels": {"app": "api"}}}}}

    async def body(s: Store) -> list[AuditRecord]:
        await s.append_audit(record(1, details=details))
        return await s.query_audit()
    [stored] = with_store(store_url, body)
    assert stored.details == details


def test_unserializable_details_are_a_store_error(store_url: str) -> None:
    async def body(s: Store) -> None:
        with pytest.raises(StoreError, match="JSON"):
            await s.append_audit(record(1, details={"when": object()}))
    with_store(store_url, body)


def test_query_audit_returns_every_field_oldest_first(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[AuditRecord], list[AuditRecord]]:
        written = [await s.append_audit(record(n, jti=f"j{n}", pod_uid=f"p{n}")) for n in range(3)]
        return written, await s.query_audit()
    written, stored = with_store(store_url, body)
    assert stored == written


@pytest.mark.parametrize(("query", "expected"), [
    ({"since": 1002.0}, ["d-2", "d-3", "d-4", "d-5"]),
    ({"until": 1002.0}, ["d-0", "d-1"]),
    ({"since": 1001.0, "until": 1003.0}, ["d-1", "d-2"]),
    ({"subject": "system:serviceaccount:other:x"}, ["d-3"]),
    ({"event": "denied"}, ["d-1", "d-4"]),
    ({"audience": "billing"}, ["d-5"]),
    ({"decision_id": "d-2"}, ["d-2"]),
    ({"limit": 2}, ["d-0", "d-1"]),
    ({"event": "denied", "limit": 1}, ["d-1"]),
    ({"limit": 0}, []),
], ids=lambda v: str(v))
def test_query_audit_filters(store_url: str, query: dict[str, Any], expected: list[str]) -> None:
    async def body(s: Store) -> list[AuditRecord]:
        for n in range(6):
            await s.append_audit(record(n, event="denied" if n in (1, 4) else "issued",
                                        subject="system:serviceaccount:other:x" if n == 3 else "sa",
                                        audience="billing" if n == 5 else "orders-db"))
        return await s.query_audit(**query)
    assert [r.decision_id for r in with_store(store_url, body)] == expected


def test_query_audit_finds_the_records_of_a_jti(store_url: str) -> None:
    async def body(s: Store) -> list[AuditRecord]:
        for n in range(4):
            await s.append_audit(record(n, jti=f"j{n % 2}"))
        return await s.query_audit(jti="j1")
    assert [r.decision_id for r in with_store(store_url, body)] == ["d-1", "d-3"]


def test_query_audit_after_seq_pages_through_the_trail(store_url: str) -> None:
    async def body(s: Store) -> list[list[str]]:
        for n in range(5):
            await s.append_audit(record(n))
        pages, after = [], 0
        while page := await s.query_audit(after_seq=after, limit=2):
            pages.append([r.decision_id for r in page])
            after = page[-1].seq or 0
        return pages
    assert with_store(store_url, body) == [["d-0", "d-1"], ["d-2", "d-3"], ["d-4"]]


def test_audit_records_survive_reopening_the_store(store_url: str) -> None:
    with_store(store_url, lambda s: s.append_audit(record(7)))
    [stored] = with_store(store_url, lambda s: s.query_audit())
    assert stored.decision_id == "d-7" and stored.details == {"n": 7}


# revocations

def test_add_revocation_returns_a_revoked_event_and_stores_it(store_url: str) -> None:
    rev = revocation("pod_uid", "5d1e-uid")

    async def body(s: Store) -> tuple[Any, ...]:
        event = await s.add_revocation(rev)
        return event, await s.get_revocation(rev.id), await s.active_revocations()
    event, got, active = with_store(store_url, body)
    assert (event.action, event.revocation, event.time) == ("revoked", rev, rev.created_at)
    assert got == rev and active == [rev]


def test_lift_revocation_returns_a_lifted_event_and_drops_it_from_the_active_list(store_url: str) -> None:
    rev, other = revocation(), revocation("audience", "billing")

    async def body(s: Store) -> tuple[Any, ...]:
        added = await s.add_revocation(rev)
        await s.add_revocation(other)
        lifted = await s.lift_revocation(rev.id, "admin:bob", 5000.0)
        return added, lifted, await s.get_revocation(rev.id), await s.active_revocations()
    added, lifted, got, active = with_store(store_url, body)
    assert lifted.action == "lifted" and lifted.seq > added.seq and lifted.time == 5000.0
    assert (lifted.revocation.lifted_at, lifted.revocation.lifted_by) == (5000.0, "admin:bob")
    assert got == lifted.revocation and not got.active
    assert active == [other]


def test_lifting_an_unknown_or_already_lifted_revocation_returns_none(store_url: str) -> None:
    rev = revocation()

    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_revocation(rev)
        await s.lift_revocation(rev.id, "admin:bob", 5000.0)
        return (await s.lift_revocation(rev.id, "admin:bob", 6000.0),
                await s.lift_revocation("no-such-id", "admin:bob", 6000.0))
    assert with_store(store_url, body) == (None, None)


def test_unknown_revocation_id_reads_as_none(store_url: str) -> None:
    assert with_store(store_url, lambda s: s.get_revocation("no-such-id")) is None


def test_revocation_with_an_unknown_kind_or_duplicate_id_is_a_store_error(store_url: str) -> None:
    async def body(s: Store) -> None:
        with pytest.raises(StoreError, match="kind 'namespace'"):
            await s.add_revocation(revocation("namespace", "payments"))
        rev = revocation()
        await s.add_revocation(rev)
        with pytest.raises(StoreError, match="already exists"):
            await s.add_revocation(rev)
        assert await s.active_revocations() == [rev]
    with_store(store_url, body)


def test_revocation_events_after_seq_are_the_later_ones_oldest_first(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        first = await s.add_revocation(revocation(rid="r1"))
        await s.add_revocation(revocation(rid="r2"))
        await s.lift_revocation("r1", "admin:bob", 7000.0)
        return (await s.revocation_events(), await s.revocation_events(after_seq=first.seq),
                await s.revocation_events(after_seq=first.seq, limit=1))
    everything, later, one = with_store(store_url, body)
    assert [(e.action, e.revocation.id) for e in everything] == [("revoked", "r1"), ("revoked", "r2"),
                                                                ("lifted", "r1")]
    assert later == everything[1:] and one == everything[1:2]


def test_last_revocation_seq_is_the_newest_event_or_zero(store_url: str) -> None:
    async def body(s: Store) -> tuple[int, int]:
        empty = await s.last_revocation_seq()
        await s.add_revocation(revocation(rid="r1"))
        lifted = await s.lift_revocation("r1", "admin:bob", 7000.0)
        assert lifted is not None
        return empty, await s.last_revocation_seq() - lifted.seq
    assert with_store(store_url, body) == (0, 0)


def test_revocations_in_force_are_the_active_ones_and_those_lifted_that_were_made_after_the_cut(
        store_url: str) -> None:
    def rev(rid: str, created_at: float) -> Revocation:
        return Revocation(id=rid, kind="subject", value=f"system:serviceaccount:ns:{rid}", reason="r",
                          created_at=created_at, created_by="admin:alice")

    async def body(s: Store) -> list[str]:
        for r in (rev("active-old", 100.0), rev("lifted-old", 100.0), rev("lifted-new", 900.0)):
            await s.add_revocation(r)
        await s.lift_revocation("lifted-old", "admin:bob", 950.0)
        await s.lift_revocation("lifted-new", "admin:bob", 950.0)
        return [r.id for r in await s.revocations_in_force(500.0)]
    assert with_store(store_url, body) == ["active-old", "lifted-new"]


def test_a_jti_revocation_keeps_its_tokens_audience_in_the_table_and_the_log(store_url: str) -> None:
    rev = Revocation(id="j1", kind="jti", value="jti-1", reason="holder", created_at=100.0, created_by="sub",
                     expires_at=400.0, audience="orders-db")

    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_revocation(rev)
        lifted = await s.lift_revocation("j1", "admin:bob", 200.0)
        return (await s.get_revocation("j1"), [e.revocation.audience for e in await s.revocation_events()],
                await s.revocations_in_force(0.0), lifted)
    got, logged, in_force, lifted = with_store(store_url, body)
    assert got.audience == "orders-db" and logged == ["orders-db", "orders-db"]
    assert [r.audience for r in in_force] == ["orders-db"] and lifted.revocation.audience == "orders-db"


def test_the_store_epoch_survives_reopening_and_differs_for_a_store_made_anew(store_url: str,
                                                                               tmp_path: Path) -> None:
    first = with_store(store_url, lambda s: s.store_epoch())
    again = with_store(store_url, lambda s: s.store_epoch())
    other = with_store(f"sqlite:///{tmp_path}/another.db", lambda s: s.store_epoch())
    assert first == again and first != other
    assert first.isalnum() and len(first) == 16


def test_purge_drops_expired_and_long_lifted_revocations_with_their_events_and_keeps_the_rest(
        store_url: str) -> None:
    def rev(rid: str, kind: str, expires_at: float | None) -> Revocation:
        return Revocation(id=rid, kind=kind, value=f"value-{rid}", reason="r",  # type: ignore[arg-type]
                          created_at=1000.0, created_by="admin:alice", expires_at=expires_at)

    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_revocation(rev("jti-live", "jti", 2500.0))
        await s.add_revocation(rev("jti-at-the-edge", "jti", 2000.0))  # not before the cut: kept
        await s.add_revocation(rev("subject-forever", "subject", None))
        await s.add_revocation(rev("audience-lifted-long-ago", "audience", None))
        await s.add_revocation(rev("audience-lifted-lately", "audience", None))
        await s.lift_revocation("audience-lifted-long-ago", "admin:bob", 1100.0)
        await s.lift_revocation("audience-lifted-lately", "admin:bob", 1900.0)
        await s.add_revocation(rev("jti-expired", "jti", 1500.0))  # the newest event, and purged
        newest = await s.last_revocation_seq()
        purged = await s.purge_revocations(expired_before=2000.0, lifted_before=1500.0)
        again = await s.purge_revocations(expired_before=2000.0, lifted_before=1500.0)
        return (purged, again, [r.id for r in await s.active_revocations()],
                [(e.action, e.revocation.id) for e in await s.revocation_events()],
                await s.get_revocation("jti-expired"), await s.get_revocation("audience-lifted-lately"),
                newest)
    purged, again, active, events, expired, lately, newest = with_store(store_url, body)
    assert (purged, again) == (2, 0)
    assert sorted(active) == ["jti-at-the-edge", "jti-live", "subject-forever"]
    assert events == [("revoked", "jti-live"), ("revoked", "jti-at-the-edge"), ("revoked", "subject-forever"),
                      ("revoked", "audience-lifted-lately"), ("lifted", "audience-lifted-lately")]
    assert expired is None and lately is not None and lately.lifted_at == 1900.0

    async def later(s: Store) -> int:  # seq never goes back: a new event comes after every purged one
        return (await s.add_revocation(rev("jti-new", "jti", 9000.0))).seq
    assert with_store(store_url, later) > newest


# access requests

def access(rid: str, subject: str = "system:serviceaccount:payments:api", audience: str = "ledger",
           scopes: tuple[str, ...] = ("read", "write"), created_at: float = 1000.0,
           expires_at: float = 2000.0) -> AccessRequest:
    return AccessRequest(id=rid, subject=subject, audience=audience, scopes=scopes, created_at=created_at,
                         expires_at=expires_at, pod_uid="uid-1")


def test_access_request_round_trips_and_duplicate_ids_are_a_store_error(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_access_request(access("a1"))
        with pytest.raises(StoreError, match="already exists"):
            await s.add_access_request(access("a1"))
        return await s.get_access_request("a1"), await s.get_access_request("nope")
    got, missing = with_store(store_url, body)
    assert got == access("a1") and missing is None


def test_find_access_request_is_the_newest_unlapsed_one_for_exactly_that_subject_audience_and_scopes(
        store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_access_request(access("old", created_at=1000.0))
        await s.add_access_request(access("new", created_at=1100.0))
        await s.add_access_request(access("lapsed", created_at=1200.0, expires_at=1400.0))
        await s.add_access_request(access("other-scopes", scopes=("read",), created_at=1300.0))
        await s.add_access_request(access("other-sub", subject="system:serviceaccount:x:y", created_at=1300.0))
        sub, aud = "system:serviceaccount:payments:api", "ledger"
        return (await s.find_access_request(sub, aud, ("read", "write"), 1500.0),
                await s.find_access_request(sub, aud, ("read",), 1500.0),
                await s.find_access_request(sub, "orders-db", ("read", "write"), 1500.0),
                await s.find_access_request(sub, aud, ("read", "write"), 2500.0))
    newest, narrower, other_audience, all_lapsed = with_store(store_url, body)
    assert newest.id == "new" and narrower.id == "other-scopes"
    assert other_audience is None and all_lapsed is None


def test_deciding_an_access_request_happens_once_and_never_after_it_lapsed(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_access_request(access("a1"))
        await s.add_access_request(access("a2", expires_at=1500.0))
        approved = await s.decide_access_request("a1", "approved", "admin:alice", 1200.0, "ticket 42", 4800.0)
        again = await s.decide_access_request("a1", "denied", "admin:bob", 1300.0, "no", 1300.0)
        lapsed = await s.decide_access_request("a2", "approved", "admin:alice", 1600.0, None, 5000.0)
        unknown = await s.decide_access_request("nope", "approved", "admin:alice", 1200.0, None, 5000.0)
        return approved, again, lapsed, unknown, await s.get_access_request("a1")
    approved, again, lapsed, unknown, stored = with_store(store_url, body)
    assert (approved.status, approved.decided_by, approved.decided_at, approved.reason, approved.expires_at) == (
        "approved", "admin:alice", 1200.0, "ticket 42", 4800.0)
    assert again is None and lapsed is None and unknown is None and stored == approved


def test_purge_drops_access_requests_that_ran_out_before_the_cut(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_access_request(access("old", expires_at=1500.0))
        await s.add_access_request(access("edge", expires_at=2000.0))
        await s.add_access_request(access("live", expires_at=2500.0))
        return (await s.purge_access_requests(2000.0), await s.get_access_request("old"),
                await s.get_access_request("edge"), await s.get_access_request("live"))
    count, old, edge, live = with_store(store_url, body)
    assert count == 1 and old is None and edge is not None and live is not None


# DPoP proofs seen at the token endpoint

def test_a_dpop_proof_jti_is_remembered_once_until_it_expires(store_url: str) -> None:
    async def body(s: Store) -> tuple[bool, ...]:
        return (await s.remember_dpop_proof("j1", 1100.0, 1000.0), await s.remember_dpop_proof("j1", 1150.0, 1050.0),
                await s.remember_dpop_proof("j2", 1100.0, 1050.0), await s.remember_dpop_proof("j1", 1200.0, 1100.0),
                await s.remember_dpop_proof("j1", 1250.0, 1150.0))
    assert with_store(store_url, body) == (True, False, True, True, False)


def test_two_store_instances_remembering_one_dpop_jti_at_once_accept_it_once(store_url: str) -> None:
    async def main() -> list[bool]:
        async with opened(store_url) as a, opened(store_url) as b:
            results = await asyncio.gather(*(s.remember_dpop_proof(f"j{n}", 2000.0, 1000.0)
                                             for n in range(20) for s in (a, b)))
            return list(results)
    results = run(main())
    assert all(results[i] != results[i + 1] for i in range(0, 40, 2))


def test_an_audit_record_with_a_dpop_proof_is_appended_only_when_the_proof_is_new(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        first = await s.append_audit_with_dpop_proof(record(1), "p1", 2000.0, 1000.0)
        replay = await s.append_audit_with_dpop_proof(record(2), "p1", 2000.0, 1001.0)
        return first, replay, [r.decision_id for r in await s.query_audit()]
    first, replay, ids = with_store(store_url, body)
    assert first is not None and first.seq and replay is None and ids == ["d-1"]


def test_purge_drops_the_dpop_proofs_that_expired(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.remember_dpop_proof("old", 1500.0, 1000.0)
        await s.remember_dpop_proof("live", 2500.0, 1000.0)
        return (await s.purge_dpop_proofs(2000.0), await s.remember_dpop_proof("live", 3000.0, 1000.0),
                await s.remember_dpop_proof("old", 3000.0, 1000.0))
    assert with_store(store_url, body) == (1, False, True)


def test_access_requests_are_listed_newest_first_by_status_without_lapsed_pending_ones(store_url: str) -> None:
    async def body(s: Store) -> tuple[Any, ...]:
        await s.add_access_request(access("p1", created_at=1000.0))
        await s.add_access_request(access("p2", created_at=1100.0))
        await s.add_access_request(access("lapsed", created_at=1050.0, expires_at=1400.0))
        await s.add_access_request(access("d1", created_at=900.0))
        await s.decide_access_request("d1", "denied", "admin:bob", 1000.0, "no", 1000.0)
        return (await s.list_access_requests("pending", 1500.0), await s.list_access_requests(None, 1500.0),
                await s.list_access_requests("denied", 1500.0), await s.list_access_requests(None, 1500.0, limit=1))
    pending, everything, denied, one = with_store(store_url, body)
    assert [r.id for r in pending] == ["p2", "p1"]
    assert [r.id for r in everything] == ["p2", "p1", "d1"]
    assert [r.id for r in denied] == ["d1"] and [r.id for r in one] == ["p2"]


def test_wait_revocation_events_returns_existing_events_at_once(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[Any], float]:
        await s.add_revocation(revocation(rid="r1"))
        started = time.monotonic()
        events = await s.wait_revocation_events(0, timeout=5)
        return events, time.monotonic() - started
    events, waited = with_store(store_url, body)
    assert [e.revocation.id for e in events] == ["r1"] and waited < 1


def test_wait_revocation_events_times_out_with_nothing(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[Any], float]:
        first = await s.add_revocation(revocation())
        started = time.monotonic()
        events = await s.wait_revocation_events(first.seq, timeout=0.4)
        return events, time.monotonic() - started
    events, waited = with_store(store_url, body)
    assert events == [] and 0.35 <= waited < 2


def test_wait_revocation_events_wakes_on_a_write_from_the_same_store(store_url: str) -> None:
    async def body(s: Store) -> tuple[list[Any], float]:
        waiter = asyncio.create_task(s.wait_revocation_events(0, timeout=10))
        await asyncio.sleep(0.3)
        await s.add_revocation(revocation(rid="r1"))
        written = time.monotonic()  # measured from the write's return: well under SQLite's 200 ms polling
        events = await waiter
        return events, time.monotonic() - written
    events, latency = with_store(store_url, body)
    assert [e.revocation.id for e in events] == ["r1"] and latency < 0.1


def test_wait_revocation_events_wakes_on_a_write_from_another_store_instance(store_url: str) -> None:
    async def main() -> tuple[list[Any], float]:
        async with opened(store_url) as reader, opened(store_url) as writer:
            waiter = asyncio.create_task(reader.wait_revocation_events(0, timeout=10))
            await asyncio.sleep(0.5)
            written = time.monotonic()
            await writer.add_revocation(revocation(rid="from-another-replica"))
            events = await waiter
            return events, time.monotonic() - written
    events, latency = run(main())
    assert [e.revocation.id for e in events] == ["from-another-replica"]
    assert latency < 0.5


# closed and unreachable stores

def test_every_call_on_a_closed_store_is_a_store_error(store_url: str) -> None:
    async def main() -> None:
        store = open_store_from_url(store_url)
        await store.open()
        await store.close()
        calls: list[Callable[[], Awaitable[Any]]] = [
            store.ping, store.list_keys, lambda: store.add_key(key("a", 1.0)),
            lambda: store.append_audit(record(1)), store.query_audit,
            lambda: store.add_revocation(revocation()), lambda: store.get_revocation("x"),
            store.active_revocations, store.revocation_events, store.store_epoch,
            lambda: store.revocations_in_force(0.0),
            lambda: store.wait_revocation_events(0, 0.1),
            lambda: store.remember_dpop_proof("j", 2.0, 1.0), lambda: store.purge_dpop_proofs(1.0)]
        for call in calls:
            with pytest.raises(StoreError):
                await call()
    run(main())


def test_opening_an_unreachable_sqlite_store_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def main() -> None:
        with pytest.raises(StoreError, match="cannot open SQLite store"):
            await open_store_from_url(f"sqlite:///{blocker}/sub/store.db").open()
    run(main())


def test_opening_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database at all" * 100)

    async def main() -> None:
        with pytest.raises(StoreError, match="cannot open SQLite store"):
            await open_store_from_url(f"sqlite:///{garbage}").open()
    run(main())


@pytest.mark.postgres
def test_opening_an_unreachable_postgres_store_is_a_store_error_within_its_timeout() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
            await open_store_from_url(url).open()
        return time.monotonic() - started
    assert run(main()) < 10
