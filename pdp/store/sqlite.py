"""SQLite store (`sqlite:///path`): the default, for one broker replica.

Writes go through one writer thread that drains a queue and commits many of them in
one transaction (group commit): the broker waits for its audit record to be durable on
every token request, and one fsync per batch instead of per request is what makes
1,000+ requests/s possible. Each write runs in its own savepoint, so one bad write fails
alone. Reads use their own connections in worker threads (WAL lets them run beside the
writer). Revocation waiters are woken by the writer in-process and by a poller that
sees writes made by other processes sharing the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from pdp.store import records
from pdp.store import shadow as shadow_store
from pdp.store.base import (
    AccessRequest,
    AccessRequestStatus,
    AuditRecord,
    Revocation,
    RevocationEvent,
    SigningKey,
    Store,
    StoreError,
)
from pdp.store.records import (
    audit_of,
    audit_query,
    check_revocation,
    clamp_limit,
    encode_details,
    event_of,
    key_of,
    revocation_of,
    revocation_to_json,
)
from pdp.store.shadow import ShadowCount, ShadowSample

T = TypeVar("T")

# One entry per schema version; PRAGMA user_version records the last one applied.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE signing_keys (
            kid TEXT PRIMARY KEY,
            private_pem BLOB NOT NULL,
            created_at REAL NOT NULL,
            retired_at REAL,
            publish_until REAL)""",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            decision_id TEXT NOT NULL,
            time REAL NOT NULL,
            event TEXT NOT NULL,
            subject TEXT,
            audience TEXT,
            policy_path TEXT,
            jti TEXT,
            pod_uid TEXT,
            details TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_subject ON audit (subject, seq)",
        "CREATE INDEX audit_event ON audit (event, seq)",
        "CREATE INDEX audit_decision ON audit (decision_id)",
        """CREATE TABLE revocations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('jti', 'subject', 'pod_uid', 'audience')),
            value TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            expires_at REAL,
            lifted_at REAL,
            lifted_by TEXT)""",
        "CREATE INDEX revocations_active ON revocations (lifted_at)",
        """CREATE TABLE revocation_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            action TEXT NOT NULL CHECK (action IN ('revoked', 'lifted')),
            revocation_id TEXT NOT NULL,
            time REAL NOT NULL,
            revocation TEXT NOT NULL)""",
    ),
    shadow_store.MIGRATION,
    records.REVOCATION_PURGE_MIGRATION,
    records.ACCESS_REQUESTS_MIGRATION,
    records.STORE_EPOCH_MIGRATION_SQLITE,
    records.AUDIT_JTI_MIGRATION,
    records.DPOP_PROOFS_MIGRATION,
)

MAX_BATCH = 512            # writes per transaction
POLL_INTERVAL = 0.2        # seconds between looks for other processes' revocation events
BUSY_TIMEOUT_MS = 5000     # how long a write waits for another process holding the file's lock

SELECT_KEYS = "SELECT kid, private_pem, created_at, retired_at, publish_until FROM signing_keys"
INSERT_KEY = ("INSERT INTO signing_keys (kid, private_pem, created_at, retired_at, publish_until) "
              "VALUES (?, ?, ?, ?, ?)")
SELECT_AUDIT = ("SELECT seq, decision_id, time, event, subject, audience, policy_path, jti, pod_uid, details "
                "FROM audit")
SELECT_REVOCATIONS = ("SELECT id, kind, value, reason, created_at, created_by, expires_at, lifted_at, lifted_by, "
                      "audience FROM revocations")
INSERT_REVOCATION = ("INSERT INTO revocations (id, kind, value, reason, created_at, created_by, expires_at, "
                     "lifted_at, lifted_by, audience) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def path_from_url(url: str) -> str:
    """`sqlite:///rel/path` -> `rel/path`; `sqlite:////abs/path` -> `/abs/path`."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"store URL {url!r}: expected sqlite:///PATH")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path:
        raise StoreError(f"store URL {url!r}: no file path after sqlite:///")
    return path


Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller gave up (cancelled); the write itself stands
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class _Write:
    __slots__ = ("fn", "future", "loop", "one_statement", "wakes_waiters")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[Any], wakes_waiters: bool, one_statement: bool) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future
        self.wakes_waiters = wakes_waiters
        # a single statement that fails undoes only itself, so it needs no savepoint of its own
        self.one_statement = one_statement


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._revocations_changed = asyncio.Event()
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None

    # lifecycle

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # A returned commit survives power loss. NORMAL (no fsync per WAL commit) was measured
        # beside it under issuance load and gained nothing beyond noise: the fsync is once per
        # batch, on the writer thread, and the event loop is what bounds issuance.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _open_writer_connection(self) -> sqlite3.Connection:
        parent = Path(self.path).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"SQLite store {self.path!r}: cannot switch to WAL journal mode (got {mode!r}); "
                                 "put the database on a local filesystem")
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file at once: one migrates
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreError(f"SQLite store {self.path!r} has schema version {version}, newer than the "
                                 f"{len(MIGRATIONS)} this jitmesh knows; upgrade jitmesh")
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def open(self) -> None:
        if self._open:
            return
        conn = await asyncio.to_thread(self._open_writer_connection)
        self._loop = asyncio.get_running_loop()
        self._revocations_changed = asyncio.Event()
        self._writer = threading.Thread(target=self._writer_main, args=(conn,), name="sqlite-store-writer",
                                        daemon=True)
        self._writer.start()
        self._poller = asyncio.create_task(self._poll_revocations(), name="sqlite-store-revocation-poller")
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._writes.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        with self._readers_lock:
            readers, self._all_readers = self._all_readers, []
        for conn in readers:
            conn.close()
        self._readers = queue.SimpleQueue()
        self._wake_waiters()

    # the writer thread

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._writes.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._commit_batch(conn, batch)
            # fail whatever raced with close()
            while True:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._deliver([item], [(None, StoreError(f"SQLite store {self.path!r} is closed"))])
        finally:
            conn.close()

    def _deliver(self, writes: list[_Write], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        """Resolve the callers' futures, with one wake-up of each event loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for write, (result, error) in zip(writes, outcomes, strict=True):
            by_loop.setdefault(write.loop, []).append((write.future, result, error))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_settle, settled)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = StoreError(f"SQLite store {self.path!r}: cannot start a write transaction: {exc}")
            self._deliver(batch, [(None, error)] * len(batch))
            return
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            for write in batch:
                if not write.one_statement:
                    conn.execute("SAVEPOINT one_write")
                try:
                    result = write.fn(conn)
                except Exception as exc:  # whatever it was, it fails this write alone and as a StoreError
                    if not write.one_statement:
                        conn.execute("ROLLBACK TO one_write")
                        conn.execute("RELEASE one_write")
                    message = exc if isinstance(exc, StoreError) else StoreError(
                        f"SQLite store {self.path!r}: write failed: {type(exc).__name__}: {exc}")
                    outcomes.append((None, message))
                else:
                    if not write.one_statement:
                        conn.execute("RELEASE one_write")
                    outcomes.append((result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = StoreError(f"SQLite store {self.path!r}: commit failed, nothing of it was written: {exc}")
            self._deliver(batch, [(None, error)] * len(batch))
            return
        self._deliver(batch, outcomes)
        wake = any(w.wakes_waiters and failure is None for w, (_, failure) in zip(batch, outcomes, strict=True))
        if wake and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_waiters)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], wakes_waiters: bool = False,
                     one_statement: bool = False) -> T:
        if not self._open:
            raise StoreError(f"SQLite store {self.path!r} is closed")
        if self._writer is None or not self._writer.is_alive():
            raise StoreError(f"SQLite store {self.path!r}: the writer thread has stopped; restart the broker")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writes.put(_Write(fn, loop, future, wakes_waiters, one_statement))
        return await future

    # reads

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            try:
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path!r}: cannot open a reader: {exc}") from None
            with self._readers_lock:
                self._all_readers.append(conn)
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: read failed: {exc}") from None
        finally:
            if self._open:
                self._readers.put(conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open:
            raise StoreError(f"SQLite store {self.path!r} is closed")
        return await asyncio.to_thread(self._with_reader, fn)

    async def ping(self) -> None:
        if self._open and (self._writer is None or not self._writer.is_alive()):
            raise StoreError(f"SQLite store {self.path!r}: the writer thread has stopped; restart the broker")
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # signing keys

    async def list_keys(self) -> list[SigningKey]:
        rows = await self._read(lambda c: c.execute(
            SELECT_KEYS + " ORDER BY created_at, kid").fetchall())
        return [key_of(r) for r in rows]

    async def add_key(self, key: SigningKey) -> None:
        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(INSERT_KEY,
                          (key.kid, key.private_pem, key.created_at, key.retired_at, key.publish_until))
            except sqlite3.IntegrityError:
                raise StoreError(f"signing key {key.kid!r} already exists; kids must be unique") from None
        await self._write(insert)

    async def retire_key(self, kid: str, retired_at: float, publish_until: float) -> None:
        await self._write(lambda c: c.execute(
            "UPDATE signing_keys SET retired_at = ?, publish_until = ? WHERE kid = ?",
            (retired_at, publish_until, kid)))

    async def rotate_key(self, new: SigningKey, rotate_if_older_than: float, publish_until: float) -> SigningKey:
        def rotate(c: sqlite3.Connection) -> SigningKey:
            # runs inside the writer's BEGIN IMMEDIATE: no other process can rotate meanwhile
            row = c.execute(SELECT_KEYS + " WHERE retired_at IS NULL "
                            "ORDER BY created_at DESC, kid DESC LIMIT 1").fetchone()
            if row is not None and row["created_at"] >= rotate_if_older_than:
                return key_of(row)
            c.execute("UPDATE signing_keys SET retired_at = ?, publish_until = ? WHERE retired_at IS NULL",
                      (new.created_at, publish_until))
            try:
                c.execute(INSERT_KEY,
                          (new.kid, new.private_pem, new.created_at, new.retired_at, new.publish_until))
            except sqlite3.IntegrityError:
                raise StoreError(f"signing key {new.kid!r} already exists; kids must be unique") from None
            return new
        return await self._write(rotate)

    async def delete_key(self, kid: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM signing_keys WHERE kid = ?", (kid,)))

    # audit

    async def append_audit(self, record: AuditRecord) -> AuditRecord:
        details = encode_details(record)
        values = (record.decision_id, record.time, record.event, record.subject, record.audience,
                  record.policy_path, record.jti, record.pod_uid, details)

        def insert(c: sqlite3.Connection) -> int:
            cur = c.execute("INSERT INTO audit (decision_id, time, event, subject, audience, policy_path, jti, "
                            "pod_uid, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return int(cast(int, cur.lastrowid))
        seq = await self._write(insert, one_statement=True)
        return replace(record, seq=seq)

    async def append_audit_with_dpop_proof(self, record: AuditRecord, jti: str, expires_at: float,
                                           now: float) -> AuditRecord | None:
        details = encode_details(record)
        values = (record.decision_id, record.time, record.event, record.subject, record.audience,
                  record.policy_path, record.jti, record.pod_uid, details)
        remember = records.REMEMBER_DPOP_PROOF.format(p="?")

        def insert(c: sqlite3.Connection) -> int | None:
            if c.execute(remember, (jti, expires_at, now)).rowcount != 1:
                return None
            cur = c.execute("INSERT INTO audit (decision_id, time, event, subject, audience, policy_path, jti, "
                            "pod_uid, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return int(cast(int, cur.lastrowid))
        seq = await self._write(insert)
        return None if seq is None else replace(record, seq=seq)

    async def query_audit(self, *, since: float | None = None, until: float | None = None,
                          subject: str | None = None, event: str | None = None,
                          audience: str | None = None, decision_id: str | None = None,
                          after_seq: int | None = None, limit: int = 100, jti: str | None = None) -> list[AuditRecord]:
        sql, params = audit_query(SELECT_AUDIT, "?", since=since, until=until, subject=subject, event=event,
                                  audience=audience, decision_id=decision_id, after_seq=after_seq, limit=limit,
                                  jti=jti)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [audit_of(r) for r in rows]

    async def set_audit_details(self, seq: int, details: dict[str, Any]) -> None:
        text = records.encode_details_only(seq, details)
        statement = records.SET_AUDIT_DETAILS.format(details="?", p="?")
        await self._write(lambda c: c.execute(statement, (text, seq)), one_statement=True)

    async def purge_audit(self, before: float) -> int:
        statement = records.PURGE_AUDIT_BATCH.format(p="?")
        purged = 0
        while True:  # one batch a transaction: token requests' audit writes go in between
            n = await self._write(lambda c: c.execute(statement, (before,)).rowcount, one_statement=True)
            purged += n
            if n < records.AUDIT_PURGE_BATCH:
                return purged

    # revocations

    async def add_revocation(self, revocation: Revocation) -> RevocationEvent:
        check_revocation(revocation)

        def insert(c: sqlite3.Connection) -> RevocationEvent:
            try:
                c.execute(INSERT_REVOCATION,
                          (revocation.id, revocation.kind, revocation.value, revocation.reason,
                           revocation.created_at, revocation.created_by, revocation.expires_at,
                           revocation.lifted_at, revocation.lifted_by, revocation.audience))
            except sqlite3.IntegrityError:
                raise StoreError(f"revocation {revocation.id!r} already exists; ids must be unique") from None
            return self._append_event(c, "revoked", revocation, revocation.created_at)
        return await self._write(insert, wakes_waiters=True)

    @staticmethod
    def _append_event(c: sqlite3.Connection, action: Literal["revoked", "lifted"], revocation: Revocation,
                      when: float) -> RevocationEvent:
        cur = c.execute("INSERT INTO revocation_events (action, revocation_id, time, revocation) VALUES (?, ?, ?, ?)",
                        (action, revocation.id, when, revocation_to_json(revocation)))
        return RevocationEvent(seq=int(cast(int, cur.lastrowid)), action=action, revocation=revocation, time=when)

    async def lift_revocation(self, revocation_id: str, lifted_by: str, when: float) -> RevocationEvent | None:
        def lift(c: sqlite3.Connection) -> RevocationEvent | None:
            cur = c.execute("UPDATE revocations SET lifted_at = ?, lifted_by = ? WHERE id = ? AND lifted_at IS NULL",
                            (when, lifted_by, revocation_id))
            if cur.rowcount == 0:
                return None
            row = c.execute(SELECT_REVOCATIONS + " WHERE id = ?",
                            (revocation_id,)).fetchone()
            return self._append_event(c, "lifted", revocation_of(row), when)
        return await self._write(lift, wakes_waiters=True)

    async def get_revocation(self, revocation_id: str) -> Revocation | None:
        row = await self._read(lambda c: c.execute(
            SELECT_REVOCATIONS + " WHERE id = ?", (revocation_id,)).fetchone())
        return None if row is None else revocation_of(row)

    async def active_revocations(self) -> list[Revocation]:
        rows = await self._read(lambda c: c.execute(
            SELECT_REVOCATIONS + " WHERE lifted_at IS NULL ORDER BY created_at, id").fetchall())
        return [revocation_of(r) for r in rows]

    async def revocations_in_force(self, lifted_if_created_after: float) -> list[Revocation]:
        rows = await self._read(lambda c: c.execute(records.SELECT_REVOCATIONS_IN_FORCE.format(p="?"),
                                                    (lifted_if_created_after,)).fetchall())
        return [revocation_of(r) for r in rows]

    async def store_epoch(self) -> str:
        row = await self._read(lambda c: c.execute(records.SELECT_STORE_EPOCH).fetchone())
        if row is None:
            raise StoreError(f"SQLite store {self.path!r} has no epoch; its schema is incomplete")
        return str(row[0])

    async def revocation_events(self, after_seq: int = 0, limit: int = 1000) -> list[RevocationEvent]:
        rows = await self._read(lambda c: c.execute(
            "SELECT seq, action, time, revocation FROM revocation_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, clamp_limit(limit))).fetchall())
        return [event_of(r) for r in rows]

    # access requests: the SQL lives in pdp/store/records.py, shared with PostgreSQL

    async def add_access_request(self, request: AccessRequest) -> None:
        records.check_access_request(request)

        def insert(c: sqlite3.Connection) -> None:
            try:
                c.execute(records.INSERT_ACCESS_REQUEST.format(p="?"), records.access_request_row(request))
            except sqlite3.IntegrityError:
                raise StoreError(f"access request {request.id!r} already exists; ids must be unique") from None
        await self._write(insert)

    async def get_access_request(self, request_id: str) -> AccessRequest | None:
        row = await self._read(lambda c: c.execute(records.SELECT_ACCESS_REQUEST.format(p="?"),
                                                   (request_id,)).fetchone())
        return None if row is None else records.access_request_of(tuple(row))

    async def find_access_request(self, subject: str, audience: str, scopes: tuple[str, ...],
                                  now: float) -> AccessRequest | None:
        row = await self._read(lambda c: c.execute(records.FIND_ACCESS_REQUEST.format(p="?"),
                                                   (subject, audience, " ".join(scopes), now)).fetchone())
        return None if row is None else records.access_request_of(tuple(row))

    async def decide_access_request(self, request_id: str, status: AccessRequestStatus, decided_by: str,
                                    decided_at: float, reason: str | None,
                                    expires_at: float) -> AccessRequest | None:
        def decide(c: sqlite3.Connection) -> AccessRequest | None:
            cur = c.execute(records.DECIDE_ACCESS_REQUEST.format(p="?"),
                            (status, decided_by, decided_at, reason, expires_at, request_id, decided_at))
            if cur.rowcount != 1:
                return None
            row = c.execute(records.SELECT_ACCESS_REQUEST.format(p="?"), (request_id,)).fetchone()
            return records.access_request_of(tuple(row))
        return await self._write(decide)

    async def purge_access_requests(self, before: float) -> int:
        return await self._write(lambda c: c.execute(records.PURGE_ACCESS_REQUESTS.format(p="?"), (before,)).rowcount)

    async def remember_dpop_proof(self, jti: str, expires_at: float, now: float) -> bool:
        statement = records.REMEMBER_DPOP_PROOF.format(p="?")
        return await self._write(lambda c: c.execute(statement, (jti, expires_at, now)).rowcount == 1)

    async def purge_dpop_proofs(self, before: float) -> int:
        return await self._write(lambda c: c.execute(records.PURGE_DPOP_PROOFS.format(p="?"), (before,)).rowcount)

    async def list_access_requests(self, status: AccessRequestStatus | None, now: float,
                                   limit: int = 100) -> list[AccessRequest]:
        statement, params = records.list_access_sql(status, now, clamp_limit(limit), "?")
        rows = await self._read(lambda c: c.execute(statement, params).fetchall())
        return [records.access_request_of(tuple(r)) for r in rows]

    async def last_revocation_seq(self) -> int:
        row = await self._read(lambda c: c.execute("SELECT max(seq) FROM revocation_events").fetchone())
        return int(row[0] or 0)

    async def purge_revocations(self, expired_before: float, lifted_before: float) -> int:
        def purge(c: sqlite3.Connection) -> int:
            params = (expired_before, lifted_before)
            c.execute(records.purge_sql(records.PURGE_REVOCATION_EVENTS, "?"), params)
            return c.execute(records.purge_sql(records.PURGE_REVOCATIONS, "?"), params).rowcount
        return await self._write(purge)

    async def wait_revocation_events(self, after_seq: int, timeout: float) -> list[RevocationEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        self._waiters += 1
        try:
            while True:
                changed = self._revocations_changed  # taken before the query: a write after it still wakes us
                events = await self.revocation_events(after_seq)
                if events:
                    return events
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._open:
                    return []
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiters -= 1

    # shadow mode: the SQL lives in pdp/store/shadow.py

    async def record_shadow(self, counts: list[ShadowCount], samples: list[ShadowSample],
                            samples_per_class: int) -> None:
        await self._write(lambda c: shadow_store.sqlite_record(c, counts, samples, samples_per_class))

    async def shadow_counts(self, since: float | None, until: float | None) -> list[ShadowCount]:
        return await self._read(lambda c: shadow_store.sqlite_counts(c, since, until))

    async def shadow_samples(self, since: float | None, until: float | None,
                             per_class: int) -> list[ShadowSample]:
        return await self._read(lambda c: shadow_store.sqlite_samples(c, since, until, per_class))

    async def prune_shadow(self, before: float) -> None:
        await self._write(lambda c: shadow_store.sqlite_prune(c, before))

    def _wake_waiters(self) -> None:
        changed, self._revocations_changed = self._revocations_changed, asyncio.Event()
        changed.set()

    async def _poll_revocations(self) -> None:
        """While anyone waits, look for events written by other processes sharing the file."""
        last: int | None = None
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self._waiters == 0:
                last = None
                continue
            try:
                row = await self._read(lambda c: c.execute("SELECT max(seq) FROM revocation_events").fetchone())
            except StoreError:
                continue
            newest = int(row[0] or 0)
            if newest != last:  # also on the first look: a write may have landed before it
                self._wake_waiters()
            last = newest
