"""What both stores check and encode the same way: records in, rows out.

Kept apart from the drivers so SQLite and PostgreSQL accept and refuse exactly the
same input, and a record read back equals the record written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, cast

import orjson

from pdp.store.base import (
    REVOCATION_KINDS,
    AccessRequest,
    AuditRecord,
    Revocation,
    RevocationEvent,
    SigningKey,
    StoreError,
)


def _compact_json(details: Any) -> str:
    """`json.dumps(details, separators=(",", ":"), allow_nan=False)`, by orjson when that
    gives the same document (an order of magnitude faster on every issuance's record): its
    text must be ASCII and read back equal, which NaN, infinities, tuples and objects orjson
    would turn into something else do not. Anything else goes to the standard encoder, whose
    text and errors stand."""
    try:
        raw = orjson.dumps(details)
        if raw.isascii() and orjson.loads(raw) == details:
            return raw.decode()
    except (TypeError, orjson.JSONDecodeError):
        pass
    return json.dumps(details, separators=(",", ":"), allow_nan=False)


def encode_details(record: AuditRecord) -> str:
    """The audit record's `details` as JSON text; StoreError if it cannot be stored."""
    try:
        text = _compact_json(record.details)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"audit record {record.decision_id!r}: details must be JSON-serializable "
                         f"(finite numbers, string keys): {exc}") from None
    for name in ("decision_id", "event", "subject", "audience", "policy_path", "jti", "pod_uid"):
        value = getattr(record, name)
        if value is not None and "\x00" in value:
            raise StoreError(f"audit record {record.decision_id!r}: {name} contains a NUL character")
    if "\\u0000" in text:
        raise StoreError(f"audit record {record.decision_id!r}: details contain a NUL character")
    if not record.decision_id or not record.event:
        raise StoreError("audit record needs a decision_id and an event")
    return text


def decode_details(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    decoded = json.loads(raw)
    return decoded if isinstance(decoded, dict) else {}


def check_revocation(revocation: Revocation) -> None:
    if revocation.kind not in REVOCATION_KINDS:
        raise StoreError(f"revocation {revocation.id!r}: kind {revocation.kind!r} is not one of "
                         f"{', '.join(REVOCATION_KINDS)}")
    if not revocation.id or not revocation.value:
        raise StoreError(f"revocation {revocation.id!r}: id and value must be non-empty")
    for name in ("id", "value", "reason", "created_by"):
        if "\x00" in getattr(revocation, name):
            raise StoreError(f"revocation {revocation.id!r}: {name} contains a NUL character")


def revocation_to_json(revocation: Revocation) -> str:
    return json.dumps({
        "id": revocation.id, "kind": revocation.kind, "value": revocation.value,
        "reason": revocation.reason, "created_at": revocation.created_at,
        "created_by": revocation.created_by, "expires_at": revocation.expires_at,
        "lifted_at": revocation.lifted_at, "lifted_by": revocation.lifted_by, "audience": revocation.audience,
    }, separators=(",", ":"))


def revocation_from_json(raw: Any) -> Revocation:
    d = raw if isinstance(raw, dict) else json.loads(raw)
    return Revocation(id=d["id"], kind=d["kind"], value=d["value"], reason=d["reason"],
                      created_at=d["created_at"], created_by=d["created_by"],
                      expires_at=d.get("expires_at"), lifted_at=d.get("lifted_at"),
                      lifted_by=d.get("lifted_by"), audience=d.get("audience"))


def audit_query(select: str, placeholder: str, *, since: float | None, until: float | None,
                subject: str | None, event: str | None, audience: str | None, decision_id: str | None,
                after_seq: int | None, limit: int, jti: str | None = None) -> tuple[str, list[Any]]:
    """`select` narrowed by the given filters, oldest first, and its bound values, with the
    driver's placeholder (`?` for sqlite3, `%s` for psycopg)."""
    where: list[str] = []
    params: list[Any] = []
    for column, op, value in (("time", ">=", since), ("time", "<", until), ("subject", "=", subject),
                              ("event", "=", event), ("audience", "=", audience),
                              ("decision_id", "=", decision_id), ("jti", "=", jti), ("seq", ">", after_seq)):
        if value is not None:
            where.append(f"{column} {op} {placeholder}")  # fixed fragments; values are bound
            params.append(value)
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY seq LIMIT {placeholder}"
    params.append(clamp_limit(limit))
    return sql, params


def clamp_limit(limit: int, ceiling: int = 10_000) -> int:
    return max(0, min(int(limit), ceiling))


# --- audit retention and coalesced counts: the same statements on both stores -----------------

AUDIT_PURGE_BATCH = 5000
PURGE_AUDIT_BATCH = ("DELETE FROM audit WHERE seq IN "  # noqa: S608 (constants only; values are parameters)
                     "(SELECT seq FROM audit WHERE time < {p} LIMIT " + str(AUDIT_PURGE_BATCH) + ")")
SET_AUDIT_DETAILS = "UPDATE audit SET details = {details} WHERE seq = {p}"


def encode_details_only(seq: int, details: dict[str, Any]) -> str:
    """`details` as JSON text for an update of record `seq`; StoreError if it cannot be stored."""
    try:
        text = _compact_json(details)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"audit record {seq}: details must be JSON-serializable: {exc}") from None
    if "\\u0000" in text:
        raise StoreError(f"audit record {seq}: details contain a NUL character")
    return text


# --- revocation purge: the same statements on both stores ------------------------------------

# Indexes for the purge (a later migration of both stores).
REVOCATION_PURGE_MIGRATION: tuple[str, ...] = (
    "CREATE INDEX revocations_expires ON revocations (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX revocations_lifted ON revocations (lifted_at) WHERE lifted_at IS NOT NULL",
    "CREATE INDEX revocation_events_revocation ON revocation_events (revocation_id)",
)
PURGE_REVOCATION_EVENTS = ("DELETE FROM revocation_events WHERE revocation_id IN "
                           "(SELECT id FROM revocations WHERE expires_at < {p} OR lifted_at < {p})")
PURGE_REVOCATIONS = "DELETE FROM revocations WHERE expires_at < {p} OR lifted_at < {p}"


# Revocations that still cover tokens, and the store's epoch (a later migration of both stores).
SELECT_REVOCATIONS_IN_FORCE = ("SELECT id, kind, value, reason, created_at, created_by, expires_at, lifted_at, "
                               "lifted_by, audience FROM revocations WHERE lifted_at IS NULL OR created_at > {p} "
                               "ORDER BY created_at, id")
STORE_META_TABLE = "CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL)"
REVOCATION_AUDIENCE_COLUMN = "ALTER TABLE revocations ADD COLUMN audience text"
STORE_EPOCH_MIGRATION_SQLITE: tuple[str, ...] = (
    REVOCATION_AUDIENCE_COLUMN,
    STORE_META_TABLE,
    "INSERT INTO store_meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))))",
)
STORE_EPOCH_MIGRATION_POSTGRES: tuple[str, ...] = (
    REVOCATION_AUDIENCE_COLUMN,
    STORE_META_TABLE,
    "INSERT INTO store_meta (key, value) "
    "VALUES ('epoch', substr(md5(random()::text || clock_timestamp()::text), 1, 16))",
)
SELECT_STORE_EPOCH = "SELECT value FROM store_meta WHERE key = 'epoch'"

# The issuance of a jti is found by it (a revocation by jti takes the token's expiry and audience).
AUDIT_JTI_MIGRATION: tuple[str, ...] = ("CREATE INDEX audit_jti ON audit (jti) WHERE jti IS NOT NULL",)

# DPoP proofs accepted at the token endpoint (RFC 9449 section 11.1): a jti once per window, across
# replicas. The insert succeeds for a new jti or one whose window has passed, and for no other.
DPOP_PROOFS_MIGRATION: tuple[str, ...] = (
    "CREATE TABLE dpop_proofs (jti text PRIMARY KEY, expires_at double precision NOT NULL)",
    "CREATE INDEX dpop_proofs_expires ON dpop_proofs (expires_at)",
)
REMEMBER_DPOP_PROOF = ("INSERT INTO dpop_proofs (jti, expires_at) VALUES ({p}, {p}) "
                       "ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at "
                       "WHERE dpop_proofs.expires_at <= {p}")
PURGE_DPOP_PROOFS = "DELETE FROM dpop_proofs WHERE expires_at <= {p}"


def purge_sql(template: str, placeholder: str) -> str:
    """A purge statement with the driver's placeholder (`?` for sqlite3, `%s` for psycopg)."""
    return template.format(p=placeholder)


# --- access requests: the same table and statements on both stores ---------------------------

ACCESS_REQUESTS_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE access_requests (
        id text PRIMARY KEY,
        subject text NOT NULL,
        audience text NOT NULL,
        scopes text NOT NULL,
        pod_uid text,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
        decided_by text,
        decided_at double precision,
        reason text)""",
    "CREATE INDEX access_requests_subject ON access_requests (subject, audience, created_at)",
    "CREATE INDEX access_requests_status ON access_requests (status, created_at)",
)
_ACCESS_COLUMNS = ("id", "subject", "audience", "scopes", "pod_uid", "created_at", "expires_at", "status",
                   "decided_by", "decided_at", "reason")
INSERT_ACCESS_REQUEST = ("INSERT INTO access_requests (id, subject, audience, scopes, pod_uid, created_at, "
                         "expires_at, status, decided_by, decided_at, reason) "
                         "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
SELECT_ACCESS_REQUEST = ("SELECT id, subject, audience, scopes, pod_uid, created_at, expires_at, status, "
                         "decided_by, decided_at, reason FROM access_requests WHERE id = {p}")
FIND_ACCESS_REQUEST = ("SELECT id, subject, audience, scopes, pod_uid, created_at, expires_at, status, "
                       "decided_by, decided_at, reason FROM access_requests "
                       "WHERE subject = {p} AND audience = {p} AND scopes = {p} AND expires_at > {p} "
                       "ORDER BY created_at DESC, id LIMIT 1")
DECIDE_ACCESS_REQUEST = ("UPDATE access_requests SET status = {p}, decided_by = {p}, decided_at = {p}, "
                         "reason = {p}, expires_at = {p} "
                         "WHERE id = {p} AND status = 'pending' AND expires_at > {p}")
_LIST_ACCESS = ("SELECT id, subject, audience, scopes, pod_uid, created_at, expires_at, status, "
                "decided_by, decided_at, reason FROM access_requests "
                "WHERE (status <> 'pending' OR expires_at > {p}) ")
LIST_ACCESS_REQUESTS = _LIST_ACCESS + "ORDER BY created_at DESC, id LIMIT {p}"
LIST_ACCESS_REQUESTS_BY_STATUS = _LIST_ACCESS + "AND status = {p} ORDER BY created_at DESC, id LIMIT {p}"


PURGE_ACCESS_REQUESTS = "DELETE FROM access_requests WHERE expires_at < {p}"


def list_access_sql(status: str | None, now: float, limit: int, placeholder: str) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters listing access requests, for the driver's placeholder."""
    if status is None:
        return LIST_ACCESS_REQUESTS.format(p=placeholder), (now, limit)
    return LIST_ACCESS_REQUESTS_BY_STATUS.format(p=placeholder), (now, status, limit)


def check_access_request(request: AccessRequest) -> None:
    if not request.id or not request.subject or not request.audience:
        raise StoreError(f"access request {request.id!r}: id, subject and audience must be non-empty")
    for text in (request.id, request.subject, request.audience, *request.scopes, request.pod_uid or "",
                 request.decided_by or "", request.reason or ""):
        if "\x00" in text:
            raise StoreError(f"access request {request.id!r}: a field contains a NUL character")


def access_request_row(r: AccessRequest) -> tuple[Any, ...]:
    return (r.id, r.subject, r.audience, " ".join(r.scopes), r.pod_uid, r.created_at, r.expires_at, r.status,
            r.decided_by, r.decided_at, r.reason)


def access_request_of(row: Any) -> AccessRequest:
    """From a row in column order (a tuple, sqlite3.Row or psycopg dict row)."""
    values = [row[k] for k in _ACCESS_COLUMNS] if isinstance(row, dict) else list(row)
    rid, subject, audience, scopes, pod_uid, created_at, expires_at, status, decided_by, decided_at, reason = values
    return AccessRequest(id=rid, subject=subject, audience=audience, scopes=tuple(scopes.split()), pod_uid=pod_uid,
                         created_at=float(created_at), expires_at=float(expires_at), status=status,
                         decided_by=decided_by, decided_at=None if decided_at is None else float(decided_at),
                         reason=reason)


# --- rows out: the same mapping for both drivers' dict-like rows -------------------------

RowMapping = Mapping[str, Any]


def key_of(row: RowMapping) -> SigningKey:
    return SigningKey(kid=row["kid"], private_pem=bytes(row["private_pem"]), created_at=row["created_at"],
                      retired_at=row["retired_at"], publish_until=row["publish_until"])


def audit_of(row: RowMapping) -> AuditRecord:
    return AuditRecord(seq=row["seq"], decision_id=row["decision_id"], time=row["time"], event=row["event"],
                       subject=row["subject"], audience=row["audience"], policy_path=row["policy_path"],
                       jti=row["jti"], pod_uid=row["pod_uid"], details=decode_details(row["details"]))


def revocation_of(row: RowMapping) -> Revocation:
    return Revocation(id=row["id"], kind=row["kind"], value=row["value"], reason=row["reason"],
                      created_at=row["created_at"], created_by=row["created_by"], expires_at=row["expires_at"],
                      lifted_at=row["lifted_at"], lifted_by=row["lifted_by"], audience=row["audience"])


def event_of(row: RowMapping) -> RevocationEvent:
    action = cast(Literal["revoked", "lifted"], row["action"])
    return RevocationEvent(seq=row["seq"], action=action, revocation=revocation_from_json(row["revocation"]),
                           time=row["time"])
