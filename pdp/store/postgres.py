"""PostgreSQL store (`postgresql://...`): several broker replicas share one database.

- Migrations run at open under a session advisory lock, so replicas starting together
  apply each one exactly once; `schema_migrations` records them.
- Audit appends from concurrent requests are committed together by one batcher task
  (group commit). Appends and revocation events take a transaction-scoped advisory lock
  so `seq` order is commit order across replicas: a follower reading `seq > N` never
  skips a record that committed late.
- A revocation's NOTIFY is sent in the transaction that inserts its event; a dedicated
  LISTEN connection wakes waiters, and waiters always re-query afterwards, polling while
  the listener is down, so nothing is missed.
- Connections come from psycopg_pool, checked on checkout: while the server is down
  every call raises StoreError within `timeout` seconds, and once it is back the pool
  reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

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

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[Row]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE signing_keys (
            kid text PRIMARY KEY,
            private_pem bytea NOT NULL,
            created_at double precision NOT NULL,
            retired_at double precision,
            publish_until double precision)""",
        """CREATE TABLE audit (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            decision_id text NOT NULL,
            time double precision NOT NULL,
            event text NOT NULL,
            subject text,
            audience text,
            policy_path text,
            jti text,
            pod_uid text,
            details jsonb NOT NULL DEFAULT '{}')""",
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_subject ON audit (subject, seq)",
        "CREATE INDEX audit_event ON audit (event, seq)",
        "CREATE INDEX audit_decision ON audit (decision_id)",
        """CREATE TABLE revocations (
            id text PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('jti', 'subject', 'pod_uid', 'audience')),
            value text NOT NULL,
            reason text NOT NULL,
            created_at double precision NOT NULL,
            created_by text NOT NULL,
            expires_at double precision,
            lifted_at double precision,
            lifted_by text)""",
        "CREATE INDEX revocations_active ON revocations (created_at) WHERE lifted_at IS NULL",
        """CREATE TABLE revocation_events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            action text NOT NULL CHECK (action IN ('revoked', 'lifted')),
            revocation_id text NOT NULL,
            time double precision NOT NULL,
            revocation jsonb NOT NULL)""",
    ),
    shadow_store.MIGRATION,
    records.REVOCATION_PURGE_MIGRATION,
    records.ACCESS_REQUESTS_MIGRATION,
    records.STORE_EPOCH_MIGRATION_POSTGRES,
    records.AUDIT_JTI_MIGRATION,
    records.DPOP_PROOFS_MIGRATION,
)

# advisory lock keys (arbitrary, fixed): "jitm" followed by a small number
MIGRATION_LOCK = 0x6A69746D_00000001
KEYS_LOCK = 0x6A69746D_00000002
AUDIT_LOCK = 0x6A69746D_00000003
EVENTS_LOCK = 0x6A69746D_00000004
CHANNEL = "jitmesh_revocations"

MAX_BATCH = 512
POLL_INTERVAL = 0.2          # waiters re-query this often while the LISTEN connection is down
LISTENING_RECHECK = 5.0      # and this often while it is up, in case a notification was lost

SELECT_KEYS = "SELECT kid, private_pem, created_at, retired_at, publish_until FROM signing_keys"
INSERT_KEY = ("INSERT INTO signing_keys (kid, private_pem, created_at, retired_at, publish_until) "
              "VALUES (%s, %s, %s, %s, %s)")
INSERT_AUDIT = ("INSERT INTO audit (decision_id, time, event, subject, audience, policy_path, jti, pod_uid, "
                "details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING seq")
SELECT_AUDIT = ("SELECT seq, decision_id, time, event, subject, audience, policy_path, jti, pod_uid, details "
                "FROM audit")
SELECT_REVOCATIONS = ("SELECT id, kind, value, reason, created_at, created_by, expires_at, lifted_at, lifted_by, "
                      "audience FROM revocations")
INSERT_REVOCATION = ("INSERT INTO revocations (id, kind, value, reason, created_at, created_by, expires_at, "
                     "lifted_at, lifted_by, audience) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
INSERT_EVENT = ("INSERT INTO revocation_events (action, revocation_id, time, revocation) "
                "VALUES (%s, %s, %s, %s::jsonb) RETURNING seq")


def describe(url: str) -> str:
    """host:port/dbname of a URL, without the password, for messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL (unparsable URL)"
    return f"PostgreSQL {params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


AuditValues = tuple[Any, ...]
P = ParamSpec("P")
T = TypeVar("T")


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def bounded(method: Callable[Concatenate[PostgresStore, P], Awaitable[T]]
            ) -> Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, T]]:
    """Run the call in a task of its own and give up on it after `call_timeout`: a server
    that hangs (rather than dies) must not hang the broker, and cancelling psycopg in the
    middle of a query may itself wait on that server."""
    @functools.wraps(method)
    async def call(self: PostgresStore, *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.call_timeout)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_forget)
            raise
        if task in done:
            return task.result()
        task.cancel()
        task.add_done_callback(_forget)
        raise Unreachable(f"{self.where}: no answer within {self.call_timeout:g}s ({method.__name__}); "
                          "is the server hung or overloaded?")
    return call


class Unreachable(StoreError):
    """The server or a connection to it is not there (as opposed to a refused statement)."""


class PostgresStore(Store):
    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 5.0,
                 statement_timeout: float = 5.0) -> None:
        self.url = url
        self.where = describe(url)
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout          # longest a call waits for a connection before StoreError
        self.statement_timeout = statement_timeout
        self.call_timeout = timeout + statement_timeout + 1.0  # the longest any call may take
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._audit_queue: asyncio.Queue[tuple[AuditValues, asyncio.Future[int]]] = asyncio.Queue()
        self._batcher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._revocations_changed = asyncio.Event()

    # lifecycle

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        if isinstance(exc, PoolTimeout):
            return Unreachable(f"{self.where}: no working connection within {self.timeout:g}s while {doing} "
                              "(is the server up?)")
        if isinstance(exc, PoolClosed):
            return StoreError(f"{self.where}: store is closed")
        if isinstance(exc, psycopg.OperationalError | OSError):
            return Unreachable(f"{self.where}: connection failed while {doing}: {str(exc).strip()}")
        return StoreError(f"{self.where}: {doing} failed: {type(exc).__name__}: {str(exc).strip()}")

    @contextlib.asynccontextmanager
    async def _conn(self, doing: str) -> AsyncIterator[Conn]:
        """A pooled autocommit connection; driver and pool errors become StoreError."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.where}: store is closed")
        try:
            async with pool.connection() as conn:
                yield conn
        except StoreError:
            raise
        except (psycopg.Error, PoolTimeout, PoolClosed, OSError) as exc:
            raise self._error(exc, doing) from None

    async def open(self) -> None:
        if self._pool is not None:
            return
        await self._migrate()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url, open=False, min_size=self.min_size, max_size=self.max_size, timeout=self.timeout,
            check=AsyncConnectionPool.check_connection, reconnect_timeout=max(self.timeout, 5.0),
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(self.timeout)),
                    "options": f"-c statement_timeout={int(self.statement_timeout * 1000)} -c synchronous_commit=on",
                    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3},
            name="jitmesh-store")
        try:
            await pool.open(wait=True, timeout=self.timeout)
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            await pool.close()
            raise self._error(exc, "opening the connection pool") from None
        self._pool = pool
        self._audit_queue = asyncio.Queue()
        self._revocations_changed = asyncio.Event()
        self._batcher = asyncio.create_task(self._audit_batcher(), name="postgres-store-audit-batcher")
        self._listener = asyncio.create_task(self._listen(), name="postgres-store-listener")

    async def _migrate(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                         connect_timeout=max(1, int(self.timeout)))
        except (psycopg.Error, OSError) as exc:
            raise self._error(exc, "connecting to apply migrations") from None
        try:
            async with conn:
                # replicas starting together: one migrates, the others wait and then find nothing to do
                await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                                   "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                cur = await conn.execute("SELECT version FROM schema_migrations")
                applied = {int(r[0]) for r in await cur.fetchall()}
                if applied and max(applied) > len(MIGRATIONS):
                    raise StoreError(f"{self.where} has schema version {max(applied)}, newer than the "
                                     f"{len(MIGRATIONS)} this jitmesh knows; upgrade jitmesh")
                for version, statements in enumerate(MIGRATIONS, start=1):
                    if version in applied:
                        continue
                    async with conn.transaction():
                        for statement in statements:
                            await conn.execute(statement)
                        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        except StoreError:
            raise
        except (psycopg.Error, OSError) as exc:
            raise self._error(exc, "applying migrations") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for task in (self._batcher, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._batcher = self._listener = None
        self._fail_queued(StoreError(f"{self.where}: store is closed"))
        await pool.close()
        self._wake_waiters()

    @bounded
    async def ping(self) -> None:
        if self._batcher is not None and self._batcher.done():
            raise StoreError(f"{self.where}: the audit writer has stopped; restart the broker")
        async with self._conn("answering a ping") as conn:
            await conn.execute("SELECT 1")

    # signing keys

    @bounded
    async def list_keys(self) -> list[SigningKey]:
        async with self._conn("listing signing keys") as conn:
            cur = await conn.execute(SELECT_KEYS + " ORDER BY created_at, kid")
            return [key_of(r) for r in await cur.fetchall()]

    @bounded
    async def add_key(self, key: SigningKey) -> None:
        async with self._conn(f"adding signing key {key.kid!r}") as conn:
            try:
                await conn.execute(INSERT_KEY, (key.kid, key.private_pem, key.created_at, key.retired_at,
                                                key.publish_until))
            except pg_errors.UniqueViolation:
                raise StoreError(f"signing key {key.kid!r} already exists; kids must be unique") from None

    @bounded
    async def retire_key(self, kid: str, retired_at: float, publish_until: float) -> None:
        async with self._conn(f"retiring signing key {kid!r}") as conn:
            await conn.execute("UPDATE signing_keys SET retired_at = %s, publish_until = %s WHERE kid = %s",
                               (retired_at, publish_until, kid))

    @bounded
    async def rotate_key(self, new: SigningKey, rotate_if_older_than: float, publish_until: float) -> SigningKey:
        async with self._conn("rotating the signing key") as conn, conn.transaction():
            # replicas rotating at once queue here; the second then sees the first's key and keeps it
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (KEYS_LOCK,))
            cur = await conn.execute(SELECT_KEYS + " WHERE retired_at IS NULL "
                                     "ORDER BY created_at DESC, kid DESC LIMIT 1")
            row = await cur.fetchone()
            if row is not None and row["created_at"] >= rotate_if_older_than:
                return key_of(row)
            await conn.execute("UPDATE signing_keys SET retired_at = %s, publish_until = %s "
                               "WHERE retired_at IS NULL", (new.created_at, publish_until))
            try:
                await conn.execute(INSERT_KEY, (new.kid, new.private_pem, new.created_at, new.retired_at,
                                                new.publish_until))
            except pg_errors.UniqueViolation:
                raise StoreError(f"signing key {new.kid!r} already exists; kids must be unique") from None
            return new

    @bounded
    async def delete_key(self, kid: str) -> None:
        async with self._conn(f"deleting signing key {kid!r}") as conn:
            await conn.execute("DELETE FROM signing_keys WHERE kid = %s", (kid,))

    # audit

    async def append_audit(self, record: AuditRecord) -> AuditRecord:
        details = encode_details(record)
        if self._pool is None:
            raise StoreError(f"{self.where}: store is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        values = (record.decision_id, record.time, record.event, record.subject, record.audience,
                  record.policy_path, record.jti, record.pod_uid, details)
        self._audit_queue.put_nowait((values, future))
        done, _ = await asyncio.wait({future}, timeout=self.call_timeout)
        if future not in done:
            future.cancel()  # the batcher skips it if it has not started; a started batch may still land
            raise Unreachable(f"{self.where}: audit append not acknowledged within {self.call_timeout:g}s; "
                              "is the server hung or overloaded?")
        return replace(record, seq=future.result())

    def _fail_queued(self, error: StoreError) -> None:
        while not self._audit_queue.empty():
            _, future = self._audit_queue.get_nowait()
            if not future.done():
                future.set_exception(error)

    async def _audit_batcher(self) -> None:
        """Commit whatever appends are waiting in one transaction, then the next lot."""
        while True:
            batch = [await self._audit_queue.get()]
            while len(batch) < MAX_BATCH and not self._audit_queue.empty():
                batch.append(self._audit_queue.get_nowait())
            batch = [(values, future) for values, future in batch if not future.done()]  # callers gave up
            if not batch:
                continue
            try:
                seqs = await self._insert_audit([values for values, _ in batch])
            except Exception as exc:  # the batcher must outlive any one batch, or appends would hang
                if not isinstance(exc, StoreError):
                    exc = StoreError(f"{self.where}: appending audit records failed: {type(exc).__name__}: {exc}")
                if len(batch) > 1 and not isinstance(exc, Unreachable):
                    await self._insert_audit_one_by_one(batch)  # one bad record must not fail the others
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, Unreachable):
                    self._fail_queued(exc)  # fail what queued meanwhile now, not after another timeout each
                continue
            for (_, future), seq in zip(batch, seqs, strict=True):
                if not future.done():
                    future.set_result(seq)

    async def _insert_audit_one_by_one(self, batch: list[tuple[AuditValues, asyncio.Future[int]]]) -> None:
        for values, future in batch:
            try:
                seqs = await self._insert_audit([values])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, StoreError) else StoreError(
                        f"{self.where}: appending an audit record failed: {type(exc).__name__}: {exc}"))
            else:
                if not future.done():
                    future.set_result(seqs[0])

    async def _insert_audit(self, rows: Sequence[AuditValues]) -> list[int]:
        async with self._conn("appending audit records") as conn, conn.transaction():
            # seq order = commit order, across replicas too
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            async with conn.cursor() as cur:
                await cur.executemany(INSERT_AUDIT, rows, returning=True)
                seqs: list[int] = []
                while True:
                    row = await cur.fetchone()
                    assert row is not None
                    seqs.append(int(row["seq"]))
                    if not cur.nextset():
                        break
        return seqs

    @bounded
    async def query_audit(self, *, since: float | None = None, until: float | None = None,
                          subject: str | None = None, event: str | None = None,
                          audience: str | None = None, decision_id: str | None = None,
                          after_seq: int | None = None, limit: int = 100, jti: str | None = None) -> list[AuditRecord]:
        sql, params = audit_query(SELECT_AUDIT, "%s", since=since, until=until, subject=subject, event=event,
                                  audience=audience, decision_id=decision_id, after_seq=after_seq, limit=limit,
                                  jti=jti)
        async with self._conn("querying the audit trail") as conn:
            cur = await conn.execute(sql, params)
            return [audit_of(r) for r in await cur.fetchall()]

    # revocations

    async def _append_event(self, conn: Conn, action: Literal["revoked", "lifted"], revocation: Revocation,
                            when: float) -> RevocationEvent:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))  # seq order = commit order
        cur = await conn.execute(INSERT_EVENT, (action, revocation.id, when, revocation_to_json(revocation)))
        row = await cur.fetchone()
        assert row is not None
        seq = int(row["seq"])
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))  # delivered at commit
        return RevocationEvent(seq=seq, action=action, revocation=revocation, time=when)

    @bounded
    async def add_revocation(self, revocation: Revocation) -> RevocationEvent:
        check_revocation(revocation)
        async with self._conn(f"adding revocation {revocation.id!r}") as conn, conn.transaction():
            try:
                await conn.execute(INSERT_REVOCATION, (
                    revocation.id, revocation.kind, revocation.value, revocation.reason, revocation.created_at,
                    revocation.created_by, revocation.expires_at, revocation.lifted_at, revocation.lifted_by,
                    revocation.audience))
            except pg_errors.UniqueViolation:
                raise StoreError(f"revocation {revocation.id!r} already exists; ids must be unique") from None
            return await self._append_event(conn, "revoked", revocation, revocation.created_at)

    @bounded
    async def lift_revocation(self, revocation_id: str, lifted_by: str, when: float) -> RevocationEvent | None:
        async with self._conn(f"lifting revocation {revocation_id!r}") as conn, conn.transaction():
            cur = await conn.execute("UPDATE revocations SET lifted_at = %s, lifted_by = %s "
                                     "WHERE id = %s AND lifted_at IS NULL RETURNING id, kind, value, reason, "
                                     "created_at, created_by, expires_at, lifted_at, lifted_by, audience",
                                     (when, lifted_by, revocation_id))
            row = await cur.fetchone()
            if row is None:
                return None
            return await self._append_event(conn, "lifted", revocation_of(row), when)

    @bounded
    async def get_revocation(self, revocation_id: str) -> Revocation | None:
        async with self._conn(f"reading revocation {revocation_id!r}") as conn:
            cur = await conn.execute(SELECT_REVOCATIONS + " WHERE id = %s", (revocation_id,))
            row = await cur.fetchone()
            return None if row is None else revocation_of(row)

    @bounded
    async def active_revocations(self) -> list[Revocation]:
        async with self._conn("listing active revocations") as conn:
            cur = await conn.execute(SELECT_REVOCATIONS + " WHERE lifted_at IS NULL ORDER BY created_at, id")
            return [revocation_of(r) for r in await cur.fetchall()]

    @bounded
    async def revocations_in_force(self, lifted_if_created_after: float) -> list[Revocation]:
        async with self._conn("listing revocations in force") as conn:
            cur = await conn.execute(records.SELECT_REVOCATIONS_IN_FORCE.format(p="%s"), (lifted_if_created_after,))
            return [revocation_of(r) for r in await cur.fetchall()]

    @bounded
    async def store_epoch(self) -> str:
        async with self._conn("reading the store's epoch") as conn:
            cur = await conn.execute(records.SELECT_STORE_EPOCH)
            row = await cur.fetchone()
            if row is None:
                raise StoreError(f"{self.where} has no epoch; its schema is incomplete")
            return str(row["value"])

    @bounded
    async def revocation_events(self, after_seq: int = 0, limit: int = 1000) -> list[RevocationEvent]:
        async with self._conn("reading revocation events") as conn:
            cur = await conn.execute("SELECT seq, action, time, revocation FROM revocation_events "
                                     "WHERE seq > %s ORDER BY seq LIMIT %s", (after_seq, clamp_limit(limit)))
            return [event_of(r) for r in await cur.fetchall()]

    # access requests: the SQL lives in pdp/store/records.py, shared with SQLite

    @bounded
    async def add_access_request(self, request: AccessRequest) -> None:
        records.check_access_request(request)
        async with self._conn(f"adding access request {request.id!r}") as conn:
            try:
                await conn.execute(records.INSERT_ACCESS_REQUEST.format(p="%s"), records.access_request_row(request))
            except pg_errors.UniqueViolation:
                raise StoreError(f"access request {request.id!r} already exists; ids must be unique") from None

    @bounded
    async def get_access_request(self, request_id: str) -> AccessRequest | None:
        async with self._conn(f"reading access request {request_id!r}") as conn, \
                conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(records.SELECT_ACCESS_REQUEST.format(p="%s"), (request_id,))
            row = await cur.fetchone()
            return None if row is None else records.access_request_of(row)

    @bounded
    async def find_access_request(self, subject: str, audience: str, scopes: tuple[str, ...],
                                  now: float) -> AccessRequest | None:
        async with self._conn("finding an access request") as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(records.FIND_ACCESS_REQUEST.format(p="%s"), (subject, audience, " ".join(scopes), now))
            row = await cur.fetchone()
            return None if row is None else records.access_request_of(row)

    @bounded
    async def decide_access_request(self, request_id: str, status: AccessRequestStatus, decided_by: str,
                                    decided_at: float, reason: str | None,
                                    expires_at: float) -> AccessRequest | None:
        async with self._conn(f"deciding access request {request_id!r}") as conn, conn.transaction(), \
                conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(records.DECIDE_ACCESS_REQUEST.format(p="%s"),
                              (status, decided_by, decided_at, reason, expires_at, request_id, decided_at))
            if cur.rowcount != 1:
                return None
            await cur.execute(records.SELECT_ACCESS_REQUEST.format(p="%s"), (request_id,))
            row = await cur.fetchone()
            return None if row is None else records.access_request_of(row)

    @bounded
    async def purge_access_requests(self, before: float) -> int:
        async with self._conn("purging access requests") as conn:
            cur = await conn.execute(records.PURGE_ACCESS_REQUESTS.format(p="%s"), (before,))
            return cur.rowcount

    @bounded
    async def remember_dpop_proof(self, jti: str, expires_at: float, now: float) -> bool:
        async with self._conn("remembering a DPoP proof") as conn:
            cur = await conn.execute(records.REMEMBER_DPOP_PROOF.format(p="%s"), (jti, expires_at, now))
            return cur.rowcount == 1

    @bounded
    async def purge_dpop_proofs(self, before: float) -> int:
        async with self._conn("purging expired DPoP proofs") as conn:
            cur = await conn.execute(records.PURGE_DPOP_PROOFS.format(p="%s"), (before,))
            return cur.rowcount

    @bounded
    async def list_access_requests(self, status: AccessRequestStatus | None, now: float,
                                   limit: int = 100) -> list[AccessRequest]:
        statement, params = records.list_access_sql(status, now, clamp_limit(limit), "%s")
        async with self._conn("listing access requests") as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(statement, params)
            return [records.access_request_of(r) for r in await cur.fetchall()]

    @bounded
    async def last_revocation_seq(self) -> int:
        async with self._conn("reading the newest revocation event") as conn:
            cur = await conn.execute("SELECT max(seq) FROM revocation_events")
            row = await cur.fetchone()
            return int(row["max"] or 0) if row else 0

    @bounded
    async def set_audit_details(self, seq: int, details: dict[str, Any]) -> None:
        text = records.encode_details_only(seq, details)
        async with self._conn("updating an audit record's count") as conn:
            await conn.execute(records.SET_AUDIT_DETAILS.format(details="%s::jsonb", p="%s"), (text, seq))

    @bounded
    async def _purge_audit_batch(self, before: float) -> int:
        async with self._conn("purging old audit records") as conn:
            cur = await conn.execute(records.PURGE_AUDIT_BATCH.format(p="%s"), (before,))
            return cur.rowcount

    async def purge_audit(self, before: float) -> int:
        purged = 0
        while True:  # one batch a statement, each bounded in time
            n = await self._purge_audit_batch(before)
            purged += n
            if n < records.AUDIT_PURGE_BATCH:
                return purged

    @bounded
    async def purge_revocations(self, expired_before: float, lifted_before: float) -> int:
        params = (expired_before, lifted_before)
        async with self._conn("purging expired and lifted revocations") as conn, conn.transaction():
            await conn.execute(records.purge_sql(records.PURGE_REVOCATION_EVENTS, "%s"), params)
            cur = await conn.execute(records.purge_sql(records.PURGE_REVOCATIONS, "%s"), params)
            return cur.rowcount

    async def wait_revocation_events(self, after_seq: int, timeout: float) -> list[RevocationEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            changed = self._revocations_changed  # taken before the query: a NOTIFY after it still wakes us
            events = await self.revocation_events(after_seq)
            if events:
                return events
            remaining = deadline - loop.time()
            if remaining <= 0 or self._pool is None:
                return []
            step = LISTENING_RECHECK if self._listening else POLL_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, step))

    # shadow mode: the SQL lives in pdp/store/shadow.py

    @bounded
    async def record_shadow(self, counts: list[ShadowCount], samples: list[ShadowSample],
                            samples_per_class: int) -> None:
        async with self._conn("recording shadow comparisons") as conn, conn.transaction():
            async with conn.cursor() as cur:
                if counts:
                    await cur.executemany(shadow_store.sql(shadow_store._UPSERT_COUNT, "%s"),
                                          shadow_store.count_rows(counts))
                if samples:
                    await cur.executemany(shadow_store.sql(shadow_store._INSERT_SAMPLE, "%s"),
                                          shadow_store.sample_rows(samples, samples_per_class))

    @bounded
    async def shadow_counts(self, since: float | None, until: float | None) -> list[ShadowCount]:
        async with self._conn("reading shadow counts") as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(shadow_store.sql(shadow_store._SELECT_COUNTS, "%s"),
                              shadow_store.counts_params(since, until))
            return [shadow_store.count_of(r) for r in await cur.fetchall()]

    @bounded
    async def shadow_samples(self, since: float | None, until: float | None,
                             per_class: int) -> list[ShadowSample]:
        async with self._conn("reading shadow samples") as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(shadow_store.sql(shadow_store._SELECT_SAMPLES, "%s"),
                              shadow_store.samples_params(since, until, per_class))
            return [shadow_store.sample_of(r) for r in await cur.fetchall()]

    @bounded
    async def prune_shadow(self, before: float) -> None:
        bucket = shadow_store.bucket_of(before)
        async with self._conn("pruning shadow comparisons") as conn, conn.transaction():
            for statement in shadow_store._PRUNE:
                await conn.execute(shadow_store.sql(statement, "%s"), (bucket,))

    def _wake_waiters(self) -> None:
        changed, self._revocations_changed = self._revocations_changed, asyncio.Event()
        changed.set()

    async def _listen(self) -> None:
        """Keep one LISTEN connection; reconnect after the server comes back."""
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.timeout)),
                    keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening = True
                    delay = 0.2
                    self._wake_waiters()  # anything written while we were not listening
                    async for _ in conn.notifies():
                        self._wake_waiters()
            except (psycopg.Error, OSError):
                pass
            finally:
                self._listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
