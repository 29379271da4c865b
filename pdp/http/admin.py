"""The admin guard: who may call an admin endpoint (an admin; a reader only for the reads of
READER_ACTIONS), and the audit record of each call (who acted, through which credential,
on which action)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request

from jitmesh.log import get_logger
from pdp.admin.auth import Admin, AdminReviewRateLimited, AdminReviewUnavailable, authenticate_admin
from pdp.audit import Auditor
from pdp.http.errors import OAuthError, unavailable
from pdp.http.services import Broker, broker_of
from pdp.store.base import AuditRecord, StoreError

log = get_logger("pdp.revocations")

READ_RECORD_WINDOW = 60.0
MAX_READS_REMEMBERED = 10_000
# what a reader may do: introspect tokens and follow the revocation events, nothing that changes state
READER_ACTIONS = frozenset({"/introspect", "revocation.events"})


async def authenticate(request: Request) -> Admin | None:
    """The admin or reader presenting this request's bearer token, or None; 503 when only
    the API server could tell and cannot be asked now, 429 when this address asks too often."""
    broker = broker_of(request)
    try:
        return await authenticate_admin(request.headers.get("authorization"), broker.admin, broker.reviewer,
                                        broker.readers, request.client.host if request.client else None)
    except AdminReviewUnavailable as exc:
        raise unavailable(str(exc)) from None
    except AdminReviewRateLimited as exc:
        raise OAuthError(429, "slow_down", str(exc), retry_after=exc.retry_after) from None


async def require_admin(request: Request, action: str | None = None) -> Admin:
    """The admin making this call (401 otherwise; 403 for a reader unless `action` is one
    of READER_ACTIONS), with an `admin` audit record of the call unless `action` is None
    (the caller writes a record of its own)."""
    broker = broker_of(request)
    admin = await authenticate(request)
    if admin is None:
        raise OAuthError(401, "invalid_token", "an admin bearer token is required: one from --admin-token-file, "
                         "or a Kubernetes identity allowed `admin` on `brokers.jitmesh.io`")
    if admin.role != "admin" and action not in READER_ACTIONS:
        raise OAuthError(403, "insufficient_scope", f"{admin.who} is a reader: it may introspect tokens and follow "
                         "the revocation events; this call needs an admin (--admin-token-file, or `admin` on "
                         "`brokers.jitmesh.io`)")
    if action is not None:
        await audit_admin_call(broker, admin, action, request)
    return admin


def admin_record(admin_who: str, via: str, action: str, now: float, event: str = "admin",
                 **fields: Any) -> AuditRecord:
    details = {"actor": admin_who, "via": via, "action": action, **fields.pop("details", {})}
    return AuditRecord(decision_id=str(uuid.uuid4()), time=now, event=event, details=details, **fields)


async def audit_admin_call(broker: Broker, admin: Admin, action: str, request: Request) -> None:
    """A read by an admin. Every one is logged; the store records the first of each minute
    per admin and endpoint (else `jitmesh audit --follow` would fill the trail with its own
    polls). When the store cannot take the record the call still proceeds (it changes
    nothing), and the log line says the record was not persisted."""
    now = broker.clock()
    key = (admin.who, action)
    last = broker.reads_recorded.get(key)
    if last is not None and 0 <= now - last < READ_RECORD_WINDOW:
        log.info("admin.read", actor=admin.who, via=admin.via, action=action, method=request.method,
                 path=request.url.path, recorded_at=last)
        return
    if len(broker.reads_recorded) >= MAX_READS_REMEMBERED:
        broker.reads_recorded.clear()
    broker.reads_recorded[key] = now
    record = admin_record(admin.who, admin.via, action, now,
                          details={"method": request.method, "path": request.url.path,
                                   "client_ip": request.client.host if request.client else None})
    try:
        await broker.auditor.write(record)
    except StoreError as exc:
        Auditor.log(record, persisted=False)
        log.error("audit.write_failed", action=action, actor=admin.who, error=str(exc))
        broker.reads_recorded.pop(key, None)  # the next read tries again
