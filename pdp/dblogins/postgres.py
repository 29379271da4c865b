"""Logins on one PostgreSQL target: create, rotate, list and end them over a small admin pool.

A login is a `LOGIN` role named `PREFIX + jti`, `VALID UNTIL` its expiry, with a `CONNECTION
LIMIT`, member of exactly the granted scopes' roles, and a comment (JSON) saying whose it is,
so that a revocation of its subject, pod or audience, and the sweep, can find it in the
database itself. The comment also holds the SHA-256 of the current password, so that the
holder can revoke its own login (RFC 7009) by showing the password; the password is 256
random bits, so its digest, though any database user can read it, gives nothing away.
Creation is one transaction: a login exists whole or not at all. Every
statement is built with `psycopg.sql`; every operation is bounded by the target's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from jitmesh.contract import POSTGRESQL_LOGIN_PREFIX
from jitmesh.log import get_logger
from pdp.dblogins.metrics import CAUSE_REFUSED, CAUSE_TIMEOUT, CAUSE_UNREACHABLE, LoginMetrics
from pdp.dblogins.targets import PostgresTarget

log = get_logger("pdp.dblogins")

PREFIX = POSTGRESQL_LOGIN_PREFIX  # the broker's own roles: PREFIX + 32 hex digits of the jti
PASSWORD_BYTES = 32  # 256 bits of entropy
TERMINATE_WAIT_MS = 1000  # pg_terminate_backend waits this long for each session to end
T = TypeVar("T")


class LoginUnavailable(Exception):
    """The target cannot be reached, refused, or was slower than its bound; nothing was made.
    `cause` is one of the metrics' causes: timeout, unreachable, refused."""

    def __init__(self, message: str, cause: str = CAUSE_REFUSED) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class LoginOwner:
    """Whose a login is; stored as the role's comment."""

    jti: str
    subject: str
    pod_uid: str | None
    audience: str
    scopes: tuple[str, ...]
    decision_id: str
    issued_at: float
    expires_at: float
    password_sha256: str | None = None  # hex; None for a login made before the digest was kept

    def comment(self) -> str:
        doc = {"jti": self.jti, "sub": self.subject, "pod_uid": self.pod_uid, "aud": self.audience,
               "scope": " ".join(self.scopes), "decision_id": self.decision_id,
               "iat": int(self.issued_at), "exp": int(self.expires_at)}
        if self.password_sha256 is not None:
            doc["pw"] = self.password_sha256
        return json.dumps(doc, separators=(",", ":"))

    def password_is(self, password: str) -> bool:
        return self.password_sha256 is not None and hmac.compare_digest(self.password_sha256,
                                                                         password_digest(password))

    @classmethod
    def from_comment(cls, text: str | None) -> LoginOwner | None:
        try:
            doc = json.loads(text or "")
            return cls(jti=str(doc["jti"]), subject=str(doc["sub"]), pod_uid=doc.get("pod_uid"),
                       audience=str(doc["aud"]), scopes=tuple(str(doc.get("scope", "")).split()),
                       decision_id=str(doc["decision_id"]), issued_at=float(doc["iat"]),
                       expires_at=float(doc["exp"]),
                       password_sha256=str(doc["pw"]) if isinstance(doc.get("pw"), str) else None)
        except (ValueError, KeyError, TypeError):
            return None

    def claims(self) -> dict[str, Any]:
        """The login as token claims, for the revocation index's `token_revoked`."""
        doc: dict[str, Any] = {"jti": self.jti, "sub": self.subject, "aud": self.audience, "iat": self.issued_at}
        if self.pod_uid:
            doc["kubernetes.io"] = {"pod": {"uid": self.pod_uid}}
        return doc


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    expires_at: float


@dataclass(frozen=True)
class ExistingLogin:
    username: str
    valid_until: float | None  # None: no expiry (never one of ours unless tampered with)
    owner: LoginOwner | None  # None: no readable comment


def role_name(jti: str) -> str:
    return PREFIX + jti


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


SCRAM_ITERATIONS = 4096  # PostgreSQL's own default for scram-sha-256


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677). Sent
    instead of the password, so the plaintext is in no statement the server could log."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class PostgresLogins:
    """The logins of one target, over at most `target.admin_pool` admin connections."""

    def __init__(self, target: PostgresTarget, metrics: LoginMetrics | None = None) -> None:
        self.target = target
        self.metrics = metrics
        ms = int(target.timeout * 1000)
        self.pool = AsyncConnectionPool(
            target.admin_dsn, open=False, min_size=0, max_size=target.admin_pool, timeout=target.timeout,
            reconnect_timeout=0, max_idle=60.0, name=f"jitmesh-{target.audience}",
            kwargs={**target.admin_conninfo(), "autocommit": True, "connect_timeout": max(1, int(target.timeout)),
                    "application_name": "jitmesh-broker",
                    "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"})
        self._abandoned: set[asyncio.Future[Any]] = set()  # operations past the bound, left to finish

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned operation's failure is expected

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=1.0)

    async def _bounded(self, what: str, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            return await self._within_bound(what, op)
        except LoginUnavailable as exc:
            if self.metrics is not None:
                self.metrics.failures.labels(self.target.audience, what.split()[0], exc.cause).inc()
            raise

    async def _within_bound(self, what: str, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        async def run() -> T:
            async with self.pool.connection() as conn:
                return await op(conn)
        # not wait_for: a cancelled statement on a hung server waits for its rollback, unbounded
        task = asyncio.ensure_future(run())
        done, _ = await asyncio.wait({task}, timeout=self.target.timeout)
        if not done:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._forget)
            raise LoginUnavailable(f"database target {self.target.audience!r} did not {what} within "
                                   f"{self.target.timeout:g}s", CAUSE_TIMEOUT)
        try:
            return task.result()
        except PoolTimeout:
            raise LoginUnavailable(f"database target {self.target.audience!r} did not {what} within "
                                   f"{self.target.timeout:g}s", CAUSE_TIMEOUT) from None
        except psycopg.Error as exc:
            # the server's message names objects, never the admin DSN
            detail = (exc.diag.message_primary if isinstance(exc, psycopg.errors.DatabaseError)
                      and exc.diag.message_primary else type(exc).__name__)
            if isinstance(exc, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)):
                cause = CAUSE_TIMEOUT  # the statement or lock timeout, the server's side of the bound
            elif isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                cause = CAUSE_UNREACHABLE
            else:
                cause = CAUSE_REFUSED
            raise LoginUnavailable(f"database target {self.target.audience!r} could not {what}: {detail}",
                                   cause) from None

    async def create(self, owner: LoginOwner) -> Login:
        """A new login for `owner`, whole (role, membership, limit, expiry and comment) or not at all."""
        name = role_name(owner.jti)
        password = new_password()
        owner = replace(owner, password_sha256=password_digest(password))
        verifier = await asyncio.to_thread(scram_verifier, password)
        roles = self.target.roles_for(owner.scopes)
        statement = sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {}").format(
            sql.Identifier(name), sql.Literal(verifier), sql.Literal(_timestamp(owner.expires_at)),
            sql.Literal(self.target.connection_limit))
        if roles:
            statement = sql.SQL("{} IN ROLE {}").format(statement, sql.SQL(", ").join(map(sql.Identifier, roles)))

        async def op(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(statement)
                await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(owner.comment())))
        await self._bounded("create a login", op)
        return Login(username=name, password=password, expires_at=owner.expires_at)

    async def rotate(self, owner: LoginOwner) -> Login:
        """The same login with a new password and a later expiry; its open sessions go on."""
        name = role_name(owner.jti)
        password = new_password()
        owner = replace(owner, password_sha256=password_digest(password))
        verifier = await asyncio.to_thread(scram_verifier, password)

        async def op(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {}").format(
                    sql.Identifier(name), sql.Literal(verifier), sql.Literal(_timestamp(owner.expires_at))))
                await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(name), sql.Literal(owner.comment())))
        await self._bounded("rotate a login", op)
        return Login(username=name, password=password, expires_at=owner.expires_at)

    async def list(self) -> list[ExistingLogin]:
        """Every role with the broker's prefix on this target's server that is this target's
        (or has no readable comment, so is no other target's either)."""
        async def op(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(
                "SELECT rolname, extract(epoch FROM rolvaliduntil)::float8, shobj_description(oid, 'pg_authid') "
                "FROM pg_roles WHERE starts_with(rolname, %s) ORDER BY rolname", (PREFIX,))
            return await cur.fetchall()
        rows = await self._bounded("list its logins", op)
        found = [ExistingLogin(username=r[0], valid_until=r[1], owner=LoginOwner.from_comment(r[2])) for r in rows]
        return [f for f in found if f.owner is None or f.owner.audience == self.target.audience]

    async def get(self, jti: str) -> ExistingLogin | None:
        """The login of this jti, if its role is there."""
        name = role_name(jti)

        async def op(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(
                "SELECT rolname, extract(epoch FROM rolvaliduntil)::float8, shobj_description(oid, 'pg_authid') "
                "FROM pg_roles WHERE rolname = %s", (name,))
            return await cur.fetchall()
        rows = await self._bounded("read a login", op)
        return next((ExistingLogin(username=r[0], valid_until=r[1], owner=LoginOwner.from_comment(r[2]))
                     for r in rows), None)

    async def end(self, username: str) -> bool:
        """End a login: no new sessions, its open ones terminated, its objects reassigned to the
        target's owner, then the role dropped. False when it was already gone."""
        if not username.startswith(PREFIX):
            raise ValueError(f"{username!r} is not a broker login")
        role = sql.Identifier(username)
        terminate = ("SELECT count(pg_terminate_backend(pid, %s)) FROM pg_stat_activity WHERE usename = %s")

        async def op(conn: psycopg.AsyncConnection[Any]) -> bool:
            try:
                await conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(role))
            except psycopg.errors.UndefinedObject:
                return False
            await conn.execute(terminate, (TERMINATE_WAIT_MS, username))
            async with conn.transaction():
                await conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    role, sql.Identifier(self.target.owner)))
                await conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
                await conn.execute(terminate, (TERMINATE_WAIT_MS, username))  # one that got in meanwhile
                await conn.execute(sql.SQL("DROP ROLE {}").format(role))
            return True
        ended = await self._bounded("end a login", op)
        if ended:
            log.info("dblogin.ended", audience=self.target.audience, username=username)
        return ended
