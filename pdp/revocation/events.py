"""`GET /v1/revocations/events`: Server-Sent Events of the store's revocation event log
(docs/contract.md §2), for sidecars and for verifiers.

- The SSE `id` of an event is `<epoch>-<seq>`: the store's epoch (made when the store was
  created) and the event's `seq` in the store's log. A client that reconnects with
  `Last-Event-ID` (header, or the `last_event_id` query parameter) gets the events after it
  that it may see, then the live ones: nothing is missed across a reconnect, even to another
  replica sharing the store. A client without one starts at the current end.
- An id this store cannot have issued (another epoch: the store was made anew; no epoch;
  a seq above the log's head) or one too far behind (more than `REPLAY_LIMIT` events) gets
  a resynchronisation instead: one `event: resync` carrying every revocation in force that
  the subscriber may see (for a lifted one, the tokens issued before it are still revoked),
  then the live events. A client never waits, silent, for a seq that means nothing.
- Every stream starts with `retry: 1000` (on the first event) and has an `event: ready` whose
  id is where the stream stands, so even a client that has seen no revocation can resume from
  there. While nothing happens, a `: keep-alive` comment goes out every `KEEPALIVE_SECONDS`.
- One `EventHub` task per broker follows the log (`Store.wait_revocation_events`: LISTEN/
  NOTIFY on PostgreSQL, so a revocation made on another replica arrives at once) and
  fans each event out to the open streams; an idle stream sleeps until an event, its
  keep-alive or its end (nothing polls per stream). A stream that cannot keep up is closed
  and its client resumes from the store.
- Streams are bounded: at most `max_streams` open, and `max_per_subject` per workload subject,
  counted per pod for a pod-bound ServiceAccount token (the replicas of a Deployment share one
  subject; each pod's sidecar needs one stream); admins, verifiers with many replicas among
  them, only count towards the overall bound;
  `TooManyStreams` beyond that (the endpoint answers 503 with Retry-After).

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
"created_at", "expires_at", "lifted_at"}` (+ `created_by`, `lifted_by` for admins, and for a
jti revocation `audience`: the revoked token's, when known, as `expires_at` is its expiry),
`id` being the revocation's id and `time` when it was revoked or lifted. A `resync` event's
data is `{"seq", "epoch", "reason", "revocations": [...]}`, each revocation as above without
`seq`, `action` and `time`.

A verifier's stream (an access proxy's) also carries announcements that are not revocations
and have no place in the log: `event: policy`, data `{"entrypoint", "etag", "time"}`, when
the broker has built a new access policy (pdp/access_bundle.py). They carry no `id`, are not
replayed, and a proxy re-checks its policy on every (re)connection anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jitmesh.log import get_logger
from pdp.store.base import Revocation, RevocationEvent, Store, StoreError

log = get_logger("pdp.events")

KEEPALIVE_SECONDS = 15.0     # the sidecar counts a stream silent for 30 s as dropped
RETRY_MILLISECONDS = 1000
QUEUE_LIMIT = 1024           # events buffered per stream before it is closed as too slow
BACKLOG_PAGE = 500
REPLAY_LIMIT = 1000          # events replayed after a Last-Event-ID; further behind, a resync
MAX_STREAM_SECONDS = 3600.0  # even an admin stream is re-established now and then
SHUTDOWN_CHECK_SECONDS = 0.5
DEFAULT_MAX_STREAMS = 10_000
DEFAULT_MAX_STREAMS_PER_SUBJECT = 8
RETRY_AFTER_FULL = 10        # seconds a refused subscriber is asked to wait

_EVENT_ID = re.compile(r"([A-Za-z0-9_]{1,64})-([0-9]{1,18})")

Snapshot = Callable[[], Awaitable[tuple[int, list[Revocation]]]]


@dataclass(frozen=True)
class Viewer:
    """Who holds a stream: an admin, or a workload by its attested subject and pod."""

    admin: bool
    subject: str | None = None
    pod_uid: str | None = None
    name: str = ""
    audiences: frozenset[str] | None = None  # set for a verifier: the audiences it serves (verifiers.py)

    @property
    def key(self) -> str:
        """What the per-subject bound counts by: the subject, and its pod when the token is
        pod-bound (every replica of a Deployment shares one ServiceAccount subject)."""
        if self.subject is None:
            return self.name
        return f"{self.subject} (pod {self.pod_uid})" if self.pod_uid else self.subject


@dataclass(frozen=True)
class LastEventId:
    """A parsed Last-Event-ID: `epoch` None for a bare number (which no epoch vouches for)."""

    epoch: str | None
    seq: int


@dataclass(frozen=True)
class Announcement:
    """A verifier notice that is no revocation: `event` and its JSON data."""

    event: str
    data: dict[str, Any]


class TooManyStreams(Exception):
    """No room for another stream, overall or for this subject."""


def event_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def revocation_doc(r: Revocation, viewer: Viewer) -> dict[str, Any] | None:
    """What this viewer is shown of a revocation; None when it does not concern it."""
    doc: dict[str, Any] = {"id": r.id, "kind": r.kind, "value": r.value, "reason": r.reason,
                           "created_at": r.created_at, "expires_at": r.expires_at, "lifted_at": r.lifted_at}
    if viewer.admin:
        doc["created_by"] = r.created_by
        doc["lifted_by"] = r.lifted_by
        if r.kind == "jti":  # with expires_at, what a verifier needs to apply it without asking
            doc["audience"] = r.audience
        return doc
    if viewer.audiences is not None:  # a verifier: what refuses tokens of the audiences it serves
        if r.kind == "audience":
            return doc if r.value in viewer.audiences else None
        if r.kind == "jti":
            if r.audience is not None and r.audience not in viewer.audiences:
                return None
            doc["audience"] = r.audience
            del doc["reason"]
        return doc
    if r.kind == "subject":
        return doc if r.value == viewer.subject else None
    if r.kind == "pod_uid":
        return doc if viewer.pod_uid is not None and r.value == viewer.pod_uid else None
    if r.kind == "jti":
        del doc["reason"]
    return doc


def event_doc(ev: RevocationEvent, viewer: Viewer) -> dict[str, Any] | None:
    """What this viewer is shown of the event; None when it does not concern it."""
    shown = revocation_doc(ev.revocation, viewer)
    if shown is None:
        return None
    return {"seq": ev.seq, "action": ev.action, "time": ev.time, **shown}


def _data(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def sse_event(epoch: str, ev: RevocationEvent, doc: dict[str, Any]) -> str:
    return f"id: {event_id(epoch, ev.seq)}\nevent: {ev.action}\ndata: {_data(doc)}\n\n"


def sse_announcement(a: Announcement) -> str:
    return f"event: {a.event}\ndata: {_data(a.data)}\n\n"


def sse_ready(epoch: str, seq: int) -> str:
    return (f"retry: {RETRY_MILLISECONDS}\nid: {event_id(epoch, seq)}\nevent: ready\n"
            f"data: {_data({'seq': seq, 'epoch': epoch})}\n\n")


def sse_resync(epoch: str, seq: int, reason: str, docs: list[dict[str, Any]]) -> str:
    body = {"seq": seq, "epoch": epoch, "reason": reason, "revocations": docs}
    return f"retry: {RETRY_MILLISECONDS}\nid: {event_id(epoch, seq)}\nevent: resync\ndata: {_data(body)}\n\n"


def parse_last_event_id(header: str | None, query: str | None) -> LastEventId | None:
    """The resume point, or None for "from now"; ValueError for anything but an id this
    broker hands out (`<epoch>-<seq>`) or a bare seq."""
    raw = header if header not in (None, "") else query
    if raw is None or raw == "":
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return LastEventId(None, int(raw))
    match = _EVENT_ID.fullmatch(raw) if raw.isascii() else None
    if match is None:
        raise ValueError(f"Last-Event-ID {raw!r:.40}: expected the id (<epoch>-<seq>) of the last event received")
    return LastEventId(match.group(1), int(match.group(2)))


class Subscription:
    """One stream's place at the hub; its slot is given back on `close()`, or when it is
    dropped without ever being read (a response that never started)."""

    def __init__(self, hub: EventHub, key: str, verifier: bool = False) -> None:
        self.queue: asyncio.Queue[RevocationEvent | Announcement | None] = asyncio.Queue(QUEUE_LIMIT)
        self.verifier = verifier  # an access proxy's stream: it also gets announcements
        self.overflowed = False
        self.stopped = False
        self._hub = weakref.ref(hub)
        self._release = weakref.finalize(self, hub._release, key)

    def put(self, events: list[RevocationEvent] | list[Announcement]) -> None:
        for ev in events:
            try:
                self.queue.put_nowait(ev)
            except asyncio.QueueFull:
                self.overflowed = True
                return

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def close(self) -> None:
        hub = self._hub()
        if hub is not None:
            hub._subs.discard(self)
        self._release()


class EventHub:
    """Follows the store's revocation event log and hands each event to every open stream."""

    def __init__(self, store: Store, start_seq: int, wait: float = 5.0, *, max_streams: int = DEFAULT_MAX_STREAMS,
                 max_per_subject: int = DEFAULT_MAX_STREAMS_PER_SUBJECT, snapshot: Snapshot | None = None,
                 lifted_window: float = 3600.0) -> None:
        self.store = store
        self.seq = start_seq
        self.wait = wait
        self.max_streams = max_streams
        self.max_per_subject = max_per_subject
        self.lifted_window = lifted_window  # with no snapshot: how long a lift keeps covering old tokens
        self.snapshot: Snapshot = snapshot or self._store_snapshot
        self.stopping: Callable[[], bool] | None = None  # set by the endpoint: is the server shutting down?
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._open = 0
        self._per_key: Counter[str] = Counter()
        self._epoch: str | None = None
        self._stopped = False

    @property
    def streams(self) -> int:
        return self._open

    async def epoch(self) -> str:
        if self._epoch is None:
            self._epoch = await self.store.store_epoch()
        return self._epoch

    async def _store_snapshot(self) -> tuple[int, list[Revocation]]:
        seq = await self.store.last_revocation_seq()  # first: the list read after it is at least as new
        return seq, await self.store.revocations_in_force(time.time() - self.lifted_window)

    def open(self, viewer: Viewer) -> Subscription:
        """A slot for one more stream; TooManyStreams when there is none."""
        if self._open >= self.max_streams:
            raise TooManyStreams(f"this broker serves at most {self.max_streams} revocation event streams "
                                 "and all are open; retry later")
        if not viewer.admin and self._per_key[viewer.key] >= self.max_per_subject:
            raise TooManyStreams(f"{viewer.key!r:.120} already has {self.max_per_subject} revocation event streams "
                                 "open, the most one subject may hold; close one or retry later")
        sub = Subscription(self, viewer.key, verifier=viewer.audiences is not None and not viewer.admin)
        self._open += 1
        self._per_key[viewer.key] += 1
        self._subs.add(sub)
        if self._stopped:
            sub.stop()
        return sub

    def _release(self, key: str) -> None:
        self._open -= 1
        self._per_key[key] -= 1
        if self._per_key[key] <= 0:
            del self._per_key[key]

    @contextlib.contextmanager
    def subscribe(self, viewer: Viewer | None = None) -> Iterator[Subscription]:
        sub = self.open(viewer or Viewer(admin=True, name="local"))
        try:
            yield sub
        finally:
            sub.close()

    def publish(self, events: list[RevocationEvent]) -> None:
        fresh = [e for e in events if e.seq > self.seq]
        if not fresh:
            return
        self.seq = fresh[-1].seq
        for sub in list(self._subs):
            sub.put(fresh)

    def announce(self, announcement: Announcement) -> int:
        """Hand an announcement to every verifier's stream; how many got it."""
        told = 0
        for sub in list(self._subs):
            if sub.verifier:
                sub.put([announcement])
                told += 1
        return told

    def stop_all(self) -> None:
        self._stopped = True
        for sub in list(self._subs):
            sub.stop()

    async def watch_shutdown(self) -> None:
        """End every stream once the server shuts down (it waits for open responses to finish)."""
        while not self._stopped:
            await asyncio.sleep(SHUTDOWN_CHECK_SECONDS)
            if self.stopping is not None and self.stopping():
                self.stop_all()

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


async def _resync_reason(store: Store, epoch: str, last: LastEventId) -> str | None:
    """Why `last` cannot be resumed from by replay, or None when it can."""
    if last.epoch is None:
        return "the Last-Event-ID carries no store epoch"
    if last.epoch != epoch:
        return "the Last-Event-ID is from another store (it was made anew): resynchronise"
    head = await store.last_revocation_seq()
    if last.seq > head:
        return f"the Last-Event-ID is beyond the newest event ({head})"
    if head - last.seq > REPLAY_LIMIT:
        return f"the Last-Event-ID is more than {REPLAY_LIMIT} events behind"
    return None


async def stream(hub: EventHub, store: Store, viewer: Viewer, last_event_id: LastEventId | None,
                 ends_at: float | None = None, stopping: Callable[[], bool] = lambda: False,
                 keepalive: float = KEEPALIVE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 sub: Subscription | None = None) -> AsyncIterator[str]:
    """The text of one SSE stream: a replay or a resync after `last_event_id`, then live events.
    `sub` is the slot the caller opened (the bounds are checked before the response starts);
    without one, the stream opens its own."""
    if sub is None:
        sub = hub.open(viewer)
    try:
        async with contextlib.aclosing(_stream(hub, store, viewer, last_event_id, ends_at, stopping, keepalive,
                                               clock, sub)) as chunks:
            async for chunk in chunks:
                yield chunk
    except StoreError as exc:  # the response has started: end it, and the client resumes
        log.warning("events.stream_store_failed", viewer=viewer.name, error=str(exc))
    finally:
        sub.close()


async def _stream(hub: EventHub, store: Store, viewer: Viewer, last_event_id: LastEventId | None,
                  ends_at: float | None, stopping: Callable[[], bool], keepalive: float, clock: Callable[[], float],
                  sub: Subscription) -> AsyncGenerator[str, None]:
    deadline = clock() + MAX_STREAM_SECONDS
    if ends_at is not None:
        deadline = min(deadline, ends_at)
    epoch = await hub.epoch()
    cursor = hub.seq
    if last_event_id is not None:
        reason = await _resync_reason(store, epoch, last_event_id)
        if reason is None:
            cursor = last_event_id.seq
        else:
            cursor, in_force = await hub.snapshot()
            docs = [d for r in in_force if (d := revocation_doc(r, viewer)) is not None]
            log.info("events.resync", viewer=viewer.name, reason=reason, revocations=len(docs))
            yield sse_resync(epoch, cursor, reason, docs)
        while True:  # the events after the cursor, from the store
            page = await store.revocation_events(after_seq=cursor, limit=BACKLOG_PAGE)
            for ev in page:
                doc = event_doc(ev, viewer)
                if doc is not None:
                    yield sse_event(epoch, ev, doc)
                cursor = ev.seq
            if len(page) < BACKLOG_PAGE:
                break
    yield sse_ready(epoch, cursor)
    idle_since = clock()
    while not stopping() and not sub.stopped:
        now = clock()
        if now >= deadline:
            return
        wake_in = min(idle_since + keepalive, deadline) - now
        item: RevocationEvent | Announcement | None
        try:
            async with asyncio.timeout(max(0.0, wake_in)):
                item = await sub.queue.get()
        except TimeoutError:
            if clock() - idle_since >= keepalive:
                idle_since = clock()
                yield ": keep-alive\n\n"
            continue
        if sub.overflowed:
            log.warning("events.stream_too_slow", viewer=viewer.name)
            return
        if isinstance(item, Announcement):
            idle_since = clock()
            yield sse_announcement(item)
            continue
        if item is None or item.seq <= cursor:
            continue
        cursor = item.seq
        doc = event_doc(item, viewer)
        if doc is not None:
            idle_since = clock()
            yield sse_event(epoch, item, doc)
