"""`GET /v1/revocations/events`: Server-Sent Events of the store's revocation event log
(docs/contract.md §2), for sidecars and for verifiers.

- The SSE `id` of an event is its `seq` in the store's log. A client that reconnects with
  `Last-Event-ID` (header, or the `last_event_id` query parameter) first gets every event
  after it from the store, then the live ones: nothing is missed across a reconnect, even
  to another replica sharing the store. A client without one starts at the current end.
- Every stream starts with `retry: 1000` and an `event: ready` whose id is where the
  stream stands, so even a client that has seen no revocation can resume from there.
  While nothing happens, a `: keep-alive` comment goes out every `KEEPALIVE_SECONDS`.
- One `EventHub` task per broker follows the log (`Store.wait_revocation_events`: LISTEN/
  NOTIFY on PostgreSQL, so a revocation made on another replica arrives at once) and
  fans each event out to the open streams; a stream that cannot keep up is closed and
  its client resumes from the store.

Who sees what:
- an admin (`--admin-token-file`, or SubjectAccessReview) sees every event in full;
- a sidecar authenticates with its ServiceAccount token, attested exactly as for `/token`,
  and sees the events that can concern it: revocations of its own subject or pod, every
  audience revocation, and every jti revocation (a jti is an opaque random id, so the
  sidecar matches it against the tokens it holds; the reason and the admin who revoked
  a jti are left out). Who revoked (`created_by`, `lifted_by`) is for admins only. The
  stream ends when the ServiceAccount token expires; the sidecar reconnects with the
  token the kubelet rotated in.

The data of each event is one JSON object:
`{"seq", "action": "revoked"|"lifted", "time", "id", "kind", "value", "reason",
"created_at", "expires_at", "lifted_at"}` (+ `created_by`, `lifted_by` for admins),
`id` being the revocation's id and `time` when it was revoked or lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from jitmesh.log import get_logger
from pdp.store.base import RevocationEvent, Store, StoreError

log = get_logger("pdp.events")

KEEPALIVE_SECONDS = 10.0
RETRY_MILLISECONDS = 1000
QUEUE_LIMIT = 1024           # events buffered per stream before it is closed as too slow
BACKLOG_PAGE = 500
MAX_STREAM_SECONDS = 3600.0  # even an admin stream is re-established now and then
SHUTDOWN_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class Viewer:
    """Who holds a stream: an admin, or a workload by its attested subject and pod."""

    admin: bool
    subject: str | None = None
    pod_uid: str | None = None
    name: str = ""
    audiences: frozenset[str] | None = None  # set for a verifier: the audiences it serves (verifiers.py)


def event_doc(ev: RevocationEvent, viewer: Viewer) -> dict[str, Any] | None:
    """What this viewer is shown of the event; None when it does not concern it."""
    r = ev.revocation
    doc: dict[str, Any] = {"seq": ev.seq, "action": ev.action, "time": ev.time, "id": r.id, "kind": r.kind,
                           "value": r.value, "reason": r.reason, "created_at": r.created_at,
                           "expires_at": r.expires_at, "lifted_at": r.lifted_at}
    if viewer.admin:
        doc["created_by"] = r.created_by
        doc["lifted_by"] = r.lifted_by
        return doc
    if viewer.audiences is not None and r.kind in ("subject", "pod_uid", "audience"):
        return doc if r.kind != "audience" or r.value in viewer.audiences else None
    if r.kind == "subject":
        return doc if r.value == viewer.subject else None
    if r.kind == "pod_uid":
        return doc if viewer.pod_uid is not None and r.value == viewer.pod_uid else None
    if r.kind == "jti":
        del doc["reason"]
    return doc


def sse_event(ev: RevocationEvent, doc: dict[str, Any]) -> str:
    return f"id: {ev.seq}\nevent: {ev.action}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n"


def sse_ready(seq: int) -> str:
    return f"retry: {RETRY_MILLISECONDS}\nid: {seq}\nevent: ready\ndata: {json.dumps({'seq': seq})}\n\n"


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The resume point, or None for "from now"; ValueError for anything but a whole number."""
    raw = header if header not in (None, "") else query
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ValueError(f"Last-Event-ID {raw!r:.40}: expected the id (a whole number) of the last event received")
    return int(raw)


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[RevocationEvent] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False

    def put(self, events: list[RevocationEvent]) -> None:
        for ev in events:
            try:
                self.queue.put_nowait(ev)
            except asyncio.QueueFull:
                self.overflowed = True
                return


class EventHub:
    """Follows the store's revocation event log and hands each event to every open stream."""

    def __init__(self, store: Store, start_seq: int, wait: float = 5.0) -> None:
        self.store = store
        self.seq = start_seq
        self.wait = wait
        self._subs: set[Subscription] = set()

    @property
    def streams(self) -> int:
        return len(self._subs)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        sub = Subscription()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, events: list[RevocationEvent]) -> None:
        fresh = [e for e in events if e.seq > self.seq]
        if not fresh:
            return
        self.seq = fresh[-1].seq
        for sub in list(self._subs):
            sub.put(fresh)

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                events = await self.store.wait_revocation_events(self.seq, timeout=self.wait)
                delay = 0.2
            except StoreError as exc:
                log.warning("events.follow_failed", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.publish(events)


async def stream(hub: EventHub, store: Store, viewer: Viewer, last_event_id: int | None,
                 ends_at: float | None = None, stopping: Callable[[], bool] = lambda: False,
                 keepalive: float = KEEPALIVE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> AsyncIterator[str]:
    """The text of one SSE stream: the backlog after `last_event_id`, then live events."""
    deadline = clock() + MAX_STREAM_SECONDS
    if ends_at is not None:
        deadline = min(deadline, ends_at)
    with hub.subscribe() as sub:
        cursor = hub.seq if last_event_id is None else last_event_id
        if last_event_id is not None:
            while True:
                page = await store.revocation_events(after_seq=cursor, limit=BACKLOG_PAGE)
                for ev in page:
                    doc = event_doc(ev, viewer)
                    if doc is not None:
                        yield sse_event(ev, doc)
                    cursor = ev.seq
                if len(page) < BACKLOG_PAGE:
                    break
        yield sse_ready(cursor)
        idle_since = clock()
        while not stopping() and clock() < deadline:
            if sub.overflowed:
                log.warning("events.stream_too_slow", viewer=viewer.name)
                return
            try:
                ev = await asyncio.wait_for(sub.queue.get(), timeout=SHUTDOWN_CHECK_SECONDS)
            except TimeoutError:
                if clock() - idle_since >= keepalive:
                    idle_since = clock()
                    yield ": keep-alive\n\n"
                continue
            if ev.seq <= cursor:
                continue
            cursor = ev.seq
            doc = event_doc(ev, viewer)
            if doc is not None:
                idle_since = clock()
                yield sse_event(ev, doc)
