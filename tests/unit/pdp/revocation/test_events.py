"""The revocation event stream's pure parts and its generator, against the in-memory store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pdp.revocation.events import EventHub, Viewer, event_doc, parse_last_event_id, stream
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
    (None, None, None), ("", None, None), ("7", None, 7), (None, "9", 9), ("3", "9", 3), (" 4 ", None, 4)])
def test_last_event_id_comes_from_the_header_else_the_query(header: str | None, query: str | None,
                                                            expected: int | None) -> None:
    assert parse_last_event_id(header, query) == expected


@pytest.mark.parametrize("raw", ["x", "-1", "1e3", "٣", "9" * 19])
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
        gen = stream(hub, store, ADMIN, last_event_id=first.seq)
        head = await take(gen, 2)            # backlog a2, then ready
        await add(store, "audience", "a3")   # live
        tail = await take(gen, 1)
        follower.cancel()
        return head + tail

    chunks = asyncio.run(scenario())
    assert chunks[0].startswith("id: 2\nevent: revoked\n") and "a2" in chunks[0]
    assert chunks[1].startswith("retry: 1000\nid: 2\nevent: ready\n")
    assert chunks[2].startswith("id: 3\nevent: revoked\n") and "a3" in chunks[2]


def test_a_fresh_stream_starts_at_the_current_end() -> None:
    async def scenario() -> list[str]:
        store = MemoryStore()
        old = await add(store, "audience", "old")
        hub = EventHub(store, start_seq=old.seq)
        return await take(stream(hub, store, ADMIN, last_event_id=None), 1)

    assert asyncio.run(scenario()) == ['retry: 1000\nid: 1\nevent: ready\ndata: {"seq": 1}\n\n']


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
