"""The revocation event stream's pure parts and its generator, against the in-memory store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pdp.revocation import events as events_module
from pdp.revocation.events import (
    EventHub,
    LastEventId,
    TooManyStreams,
    Viewer,
    event_doc,
    parse_last_event_id,
    stream,
)
from pdp.revocation.index import RevocationIndex
from pdp.store.base import Revocation, RevocationEvent, RevocationKind
from tests.fixtures.broker import MemoryStore

ADMIN = Viewer(admin=True, name="admin")
SIDECAR = Viewer(admin=False, subject="system:serviceaccount:payments:api", pod_uid="pod-1", name="sidecar")


def event(kind: RevocationKind, value: str, seq: int = 1) -> RevocationEvent:
    r = Revocation(id=f"r{seq}", kind=kind, value=value, reason="why", created_at=10.0, created_by="alice")
    return RevocationEvent(seq=seq, action="revoked", revocation=r, time=10.0)


def test_an_admin_sees_every_field_including_who() -> None:
    doc = event_doc(event("subject", "system:serviceaccount:shop:web"), ADMIN)
    assert doc is not None and doc["created_by"] == "alice" and doc["reason"] == "why" and doc["seq"] == 1


@pytest.mark.parametrize(("kind", "value", "shown"), [
    ("subject", "system:serviceaccount:payments:api", True),
    ("subject", "system:serviceaccount:shop:web", False),
    ("pod_uid", "pod-1", True),
    ("pod_uid", "pod-2", False),
    ("audience", "anything", True),
    ("jti", "any-jti", True),
])
def test_a_sidecar_sees_only_what_can_concern_it(kind: RevocationKind, value: str, shown: bool) -> None:
    doc = event_doc(event(kind, value), SIDECAR)
    assert (doc is not None) is shown
    if doc is not None:
        assert "created_by" not in doc and "lifted_by" not in doc


def test_a_sidecar_is_not_told_why_a_jti_was_revoked() -> None:
    doc = event_doc(event("jti", "j"), SIDECAR)
    assert doc is not None and "reason" not in doc


def test_a_workload_without_a_pod_sees_no_pod_events() -> None:
    assert event_doc(event("pod_uid", "pod-1"), Viewer(admin=False, subject="s", pod_uid=None)) is None


@pytest.mark.parametrize(("header", "query", "expected"), [
    (None, None, None), ("", None, None), ("ab12-7", None, LastEventId("ab12", 7)),
    (None, "ab12-9", LastEventId("ab12", 9)), ("e-3", "e-9", LastEventId("e", 3)), (" e-4 ", None, LastEventId("e", 4)),
    ("7", None, LastEventId(None, 7))])
def test_last_event_id_comes_from_the_header_else_the_query(header: str | None, query: str | None,
                                                            expected: LastEventId | None) -> None:
    assert parse_last_event_id(header, query) == expected


@pytest.mark.parametrize("raw", ["x", "-1", "1e3", "٣", "9" * 19, "e-", "e-1-2", "é-1", "e-" + "9" * 19])
def test_a_malformed_last_event_id_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(raw, None)


async def add(store: MemoryStore, kind: RevocationKind, value: str) -> RevocationEvent:
    r = Revocation(id=f"id-{value}", kind=kind, value=value, reason="r", created_at=time.time(), created_by="t")
    return await store.add_revocation(r)


async def take(gen: AsyncIterator[str], n: int, timeout: float = 5.0) -> list[str]:
    out: list[str] = []

    async def run() -> None:
        async for chunk in gen:
            out.append(chunk)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


def test_a_resumed_stream_replays_the_backlog_then_goes_live_without_duplicates() -> None:
    async def scenario() -> list[str]:
        store = MemoryStore()
        first = await add(store, "audience", "a1")
        await add(store, "audience", "a2")
        hub = EventHub(store, start_seq=0)
        follower = asyncio.create_task(hub.run())
        gen = stream(hub, store, ADMIN, last_event_id=LastEventId("memory", first.seq))
        head = await take(gen, 2)            # backlog a2, then ready
        await add(store, "audience", "a3")   # live
        tail = await take(gen, 1)
        follower.cancel()
        return head + tail

    chunks = asyncio.run(scenario())
    assert chunks[0].startswith("id: memory-2\nevent: revoked\n") and "a2" in chunks[0]
    assert chunks[1].startswith("retry: 1000\nid: memory-2\nevent: ready\n")
    assert chunks[2].startswith("id: memory-3\nevent: revoked\n") and "a3" in chunks[2]


def test_a_fresh_stream_starts_at_the_current_end() -> None:
    async def scenario() -> list[str]:
        store = MemoryStore()
        old = await add(store, "audience", "old")
        hub = EventHub(store, start_seq=old.seq)
        return await take(stream(hub, store, ADMIN, last_event_id=None), 1)

    assert asyncio.run(scenario()) == ['retry: 1000\nid: memory-1\nevent: ready\ndata: {"seq":1,"epoch":"memory"}\n\n']


def test_a_quiet_stream_sends_keep_alive_comments() -> None:
    async def scenario() -> list[str]:
        store = MemoryStore()
        hub = EventHub(store, start_seq=0)
        return await take(stream(hub, store, ADMIN, None, keepalive=0.2), 3, timeout=5)

    assert asyncio.run(scenario())[1:] == [": keep-alive\n\n", ": keep-alive\n\n"]


def test_a_stream_ends_at_its_deadline_and_when_the_server_stops() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        store = MemoryStore()
        hub = EventHub(store, start_seq=0)
        ended = [c async for c in stream(hub, store, ADMIN, None, ends_at=time.monotonic() + 0.3)]
        stopped = [c async for c in stream(hub, store, ADMIN, None, stopping=lambda: True)]
        return ended, stopped

    ended, stopped = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(ended) == 1 and len(stopped) == 1 and hub_ready(ended[0]) and hub_ready(stopped[0])


def hub_ready(chunk: str) -> bool:
    return "event: ready" in chunk


def test_a_stream_that_cannot_keep_up_is_closed_so_its_client_resumes_from_the_store() -> None:
    async def scenario() -> list[str]:
        store = MemoryStore()
        hub = EventHub(store, start_seq=0)
        gen = stream(hub, store, ADMIN, None)
        await take(gen, 1)
        flood = [await add(store, "jti", f"j{i}") for i in range(1100)]
        hub.publish(flood)
        return [c async for c in gen]

    rest = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert rest == []  # closed at once; the client reconnects with its Last-Event-ID and reads the store


def test_the_hub_hands_each_event_once_to_every_subscriber_in_order() -> None:
    store = MemoryStore()
    hub = EventHub(store, start_seq=0)
    with hub.subscribe() as one, hub.subscribe() as two:
        evs = [event("jti", "a", 1), event("jti", "b", 2)]
        hub.publish(evs)
        hub.publish(evs[1:])  # already seen: not again
        assert [one.queue.get_nowait().seq for _ in range(one.queue.qsize())] == [1, 2]
        assert two.queue.qsize() == 2
    assert hub.streams == 0


def test_idle_streams_do_not_wake_until_an_event_arrives() -> None:
    wakeups = 0

    def counting_clock() -> float:
        nonlocal wakeups
        wakeups += 1
        return time.monotonic()

    async def scenario() -> tuple[int, int]:
        nonlocal wakeups
        store = MemoryStore()
        hub = EventHub(store, start_seq=0)
        gens = [stream(hub, store, ADMIN, None, keepalive=600, clock=counting_clock) for _ in range(20)]
        for gen in gens:
            await take(gen, 1)                               # ready
        pending = [asyncio.ensure_future(take(gen, 1)) for gen in gens]
        await asyncio.sleep(0.1)
        wakeups = 0
        await asyncio.sleep(1.5)                             # idle: three polling periods of the old stream
        idle = wakeups
        hub.publish([await add(store, "audience", "wake")])
        await asyncio.wait_for(asyncio.gather(*pending), 5)
        return idle, wakeups

    idle, after_event = asyncio.run(scenario())
    assert idle == 0
    assert after_event >= 20  # each stream woke for the event, and only then


SUBJECT_A = Viewer(admin=False, subject="system:serviceaccount:a:a", name="a")
SUBJECT_B = Viewer(admin=False, subject="system:serviceaccount:b:b", name="b")


def test_the_per_subject_bound_counts_each_pod_of_a_subject_apart_and_admins_not_at_all() -> None:
    hub = EventHub(MemoryStore(), start_seq=0, max_streams=10, max_per_subject=1)
    pods = [hub.open(Viewer(admin=False, subject="system:serviceaccount:a:a", pod_uid=f"p{i}")) for i in range(3)]
    with pytest.raises(TooManyStreams, match="pod p0"):
        hub.open(Viewer(admin=False, subject="system:serviceaccount:a:a", pod_uid="p0"))
    admins = [hub.open(ADMIN) for _ in range(3)]
    assert hub.streams == len(pods) + len(admins) == 6


def test_the_hub_refuses_streams_beyond_its_bounds_overall_and_per_subject() -> None:
    hub = EventHub(MemoryStore(), start_seq=0, max_streams=3, max_per_subject=2)
    a1, a2 = hub.open(SUBJECT_A), hub.open(SUBJECT_A)
    with pytest.raises(TooManyStreams, match="system:serviceaccount:a:a"):
        hub.open(SUBJECT_A)
    b1 = hub.open(SUBJECT_B)
    with pytest.raises(TooManyStreams, match="at most 3"):
        hub.open(SUBJECT_B)
    a1.close()
    a1.close()  # twice is once
    assert hub.streams == 2
    a3 = hub.open(SUBJECT_A)
    for sub in (a2, b1):
        sub.close()
    assert hub.streams == 1 and not a3.stopped


def test_a_stream_dropped_before_it_started_gives_its_slot_back() -> None:
    store = MemoryStore()
    hub = EventHub(store, start_seq=0, max_streams=1)
    gen = stream(hub, store, SUBJECT_A, None, sub=hub.open(SUBJECT_A))
    assert hub.streams == 1
    del gen  # a response that never began sending: nothing ran the generator's finally
    assert hub.streams == 0
    hub.open(SUBJECT_A)


def data_of(chunk: str) -> dict[str, Any]:
    line = next(x for x in chunk.splitlines() if x.startswith("data: "))
    doc: dict[str, Any] = json.loads(line[len("data: "):])
    return doc


def resumed(last: LastEventId | None, viewer: Viewer, n: int) -> list[str]:
    async def scenario() -> list[str]:
        store = MemoryStore(epoch="e2")
        mine = Revocation(id="mine", kind="subject", value="system:serviceaccount:a:a", reason="r",
                          created_at=time.time(), created_by="t")
        other = Revocation(id="other", kind="subject", value="system:serviceaccount:b:b", reason="r",
                           created_at=time.time(), created_by="t")
        for r in (mine, other):
            await store.add_revocation(r)
        await add(store, "jti", "j-1")
        await store.lift_revocation("mine", "admin", time.time())  # lifted: still covers older tokens
        index = RevocationIndex(store)
        await index.load()
        hub = EventHub(store, start_seq=index.seq, snapshot=index.snapshot)
        return await take(stream(hub, store, viewer, last), n)

    return asyncio.run(scenario())


@pytest.mark.parametrize("last", [LastEventId("e1", 2), LastEventId(None, 2), LastEventId("e2", 99999999)])
def test_an_id_the_store_cannot_have_issued_gets_a_resync_of_what_the_viewer_may_see(last: LastEventId) -> None:
    chunks = resumed(last, SUBJECT_A, 2)
    assert "event: resync" in chunks[0] and "id: e2-4" in chunks[0]
    state = data_of(chunks[0])
    assert state["seq"] == 4 and state["epoch"] == "e2" and state["reason"]
    assert sorted(r["id"] for r in state["revocations"]) == ["id-j-1", "mine"]  # not another subject's
    assert next(r for r in state["revocations"] if r["id"] == "mine")["lifted_at"] is not None
    assert "event: ready" in chunks[1] and "id: e2-4" in chunks[1]


def test_an_admin_resync_carries_every_revocation_in_force() -> None:
    state = data_of(resumed(LastEventId("e1", 1), ADMIN, 1)[0])
    assert sorted(r["id"] for r in state["revocations"]) == ["id-j-1", "mine", "other"]


def test_a_replay_shows_only_the_events_the_viewer_may_see() -> None:
    chunks = resumed(LastEventId("e2", 0), SUBJECT_A, 4)
    assert [data_of(c).get("id") for c in chunks[:3]] == ["mine", "id-j-1", "mine"]
    assert "event: ready" in chunks[3] and "id: e2-4" in chunks[3]


def test_a_replay_further_behind_than_the_bound_is_a_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "REPLAY_LIMIT", 2)
    chunks = resumed(LastEventId("e2", 1), SUBJECT_A, 1)
    assert "event: resync" in chunks[0] and "more than 2 events behind" in data_of(chunks[0])["reason"]


def test_a_jti_event_tells_an_admin_the_tokens_audience_and_expiry_but_not_a_sidecar() -> None:
    r = Revocation(id="r", kind="jti", value="j", reason="leaked", created_at=10.0, created_by="holder",
                   expires_at=310.0, audience="orders-db")
    ev = RevocationEvent(seq=1, action="revoked", revocation=r, time=10.0)
    admin, sidecar = event_doc(ev, ADMIN), event_doc(ev, SIDECAR)
    assert admin is not None and (admin["audience"], admin["expires_at"]) == ("orders-db", 310.0)
    assert sidecar is not None and "audience" not in sidecar
