"""The admin API for revocations.

- `POST /v1/admin/revocations`: JSON with exactly one of `jti`, `subject`, `pod_uid`,
  `audience`, and a `reason`; 201 with the revocation (`id` included). A subject, pod or
  audience revocation also refuses new issuance until it is lifted, on every replica
  sharing the store (each follows the store's event log).
- `DELETE /v1/admin/revocations/{id}`: lift; 200 with the lifted revocation, 404 when the
  id is unknown (lifting twice answers the already lifted revocation).
- `GET /v1/admin/revocations[?kind=&value=]`: the active revocations.
- `GET /v1/revocations/events`: `pdp.revocation.stream`.

Every revocation and lift is audited with who made it (`details.actor`) as a
`revoked`/`lifted` record; reads through `pdp.http.admin`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitmesh.contract import MAX_REASON_CHARS, SERVICEACCOUNT_SUB_PREFIX
from jitmesh.log import get_logger
from pdp.audit import Auditor
from pdp.http.admin import admin_record, audit_admin_call, require_admin
from pdp.http.body import check_reason, parse_json, read_body
from pdp.http.errors import OAuthError, invalid_request
from pdp.http.services import Broker, broker_of
from pdp.revocation import stream
from pdp.revocation.events import EventHub
from pdp.store.base import REVOCATION_KINDS, Revocation, RevocationEvent, RevocationKind, StoreError

log = get_logger("pdp.revocations")

MAX_REVOCATION_BODY = 16 * 1024
MAX_VALUE_CHARS = 256


# --- revocations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RevocationRequest:
    kind: RevocationKind
    value: str
    reason: str


def parse_revocation_request(body: bytes, content_type: str | None) -> RevocationRequest:
    """The JSON body of `POST /v1/admin/revocations`, strictly."""
    doc = parse_json(body, content_type)
    if not isinstance(doc, dict):
        raise invalid_request(f"the body must be a JSON object with one of {', '.join(REVOCATION_KINDS)} "
                              f"and reason, not a {type(doc).__name__}")
    unknown = sorted(set(doc) - {*REVOCATION_KINDS, "reason"})
    if unknown:
        raise invalid_request(f"unknown field(s) {', '.join(repr(u)[:60] for u in unknown[:5])}; expected exactly "
                              f"one of {', '.join(REVOCATION_KINDS)}, and reason")
    targets = [k for k in REVOCATION_KINDS if k in doc]
    if len(targets) != 1:
        raise invalid_request(f"exactly one of {', '.join(REVOCATION_KINDS)} is required; "
                              f"{'none was' if not targets else ', '.join(targets) + ' were'} given")
    kind = targets[0]
    value = doc[kind]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_VALUE_CHARS \
            or not value.isprintable() or value != value.strip():
        raise invalid_request(f"{kind} must be a non-empty string of printable characters without surrounding "
                              f"spaces, at most {MAX_VALUE_CHARS} characters")
    if kind == "subject" and (not value.startswith(SERVICEACCOUNT_SUB_PREFIX) or value.count(":") != 3
                              or not all(value.split(":")[2:])):
        raise invalid_request(f"subject {value!r:.80} is not a token subject; expected "
                              f"{SERVICEACCOUNT_SUB_PREFIX}<namespace>:<serviceaccount>")
    reason = check_reason(doc.get("reason"), f"reason is required: a non-empty string of at most "
                          f"{MAX_REASON_CHARS} characters saying why")
    assert reason is not None
    return RevocationRequest(kind=kind, value=value, reason=reason)


def revocation_json(r: Revocation) -> dict[str, Any]:
    return {"id": r.id, "kind": r.kind, "value": r.value, "reason": r.reason, "created_at": r.created_at,
            "created_by": r.created_by, "expires_at": r.expires_at, "lifted_at": r.lifted_at,
            "lifted_by": r.lifted_by, "active": r.active}


def _record_fields(r: Revocation) -> dict[str, Any]:
    """The indexed audit columns a revocation of this kind fills, so the trail can be searched."""
    return {"subject": r.value if r.kind == "subject" else None,
            "audience": r.value if r.kind == "audience" else None,
            "jti": r.value if r.kind == "jti" else None,
            "pod_uid": r.value if r.kind == "pod_uid" else None}


def _publish_local(hub: EventHub | None, event: RevocationEvent) -> None:
    """Hand an event made here to this replica's streams at once, without waiting for the
    store's notification, when it is the very next one (never skip one from another replica)."""
    if hub is not None and event.seq == hub.seq + 1:
        hub.publish([event])


async def revoke(broker: Broker, kind: RevocationKind, value: str, reason: str, who: str, via: str,
                 revocation_id: str | None = None, expires_at: float | None = None,
                 hub: EventHub | None = None, audience: str | None = None) -> Revocation:
    """Store a revocation (in effect at once on this replica, and on the others as they
    follow the log), then its audit record. StoreError when the store refuses either."""
    revocation = Revocation(id=revocation_id or str(uuid.uuid4()), kind=kind, value=value, reason=reason,
                            created_at=broker.clock(), created_by=who, expires_at=expires_at, audience=audience)
    event = await broker.store.add_revocation(revocation)
    broker.revocations.add(revocation)
    _publish_local(hub, event)
    record = admin_record(who, via, "revocation.create", revocation.created_at, event="revoked",
                          details={"revocation_id": revocation.id, "kind": kind, "value": value, "reason": reason,
                                   "by": who},
                          **_record_fields(revocation))
    try:
        await broker.auditor.write(record)
    except StoreError as exc:
        Auditor.log(record, persisted=False)
        raise StoreError(f"revocation {revocation.id} is in effect, but its audit record could not be written: "
                         f"{exc}") from None
    log.warning("revocation.created", revocation_id=revocation.id, kind=kind, value=value, reason=reason, actor=who)
    return revocation


async def issued_token(broker: Broker, jti: str) -> tuple[float, str | None]:
    """The expiry and audience of the token with this jti, from its issuance record; for a jti
    this broker has no record of, the latest expiry any of its tokens can have."""
    for rec in await broker.store.query_audit(jti=jti, limit=10):
        exp = rec.details.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return float(exp), rec.audience
    return broker.clock() + broker.config.max_ttl, None


async def create_revocation(request: Request) -> Response:
    broker = broker_of(request)
    admin = await require_admin(request)
    req = parse_revocation_request(await read_body(request, MAX_REVOCATION_BODY), request.headers.get("content-type"))
    # A jti revocation ends with its token, so it can be purged then and a verifier can apply it alone.
    expires_at, audience = await issued_token(broker, req.value) if req.kind == "jti" else (None, None)
    revocation = await revoke(broker, req.kind, req.value, req.reason, admin.who, admin.via,
                              hub=broker.hub, expires_at=expires_at, audience=audience)
    return JSONResponse(revocation_json(revocation), status_code=201,
                        headers={"Location": f"/v1/admin/revocations/{revocation.id}", "Cache-Control": "no-store"})


async def lift_revocation(request: Request) -> Response:
    broker = broker_of(request)
    admin = await require_admin(request)
    rid = request.path_params["revocation_id"]
    now = broker.clock()
    event = await broker.store.lift_revocation(rid, admin.who, now)
    if event is None:
        existing = await broker.store.get_revocation(rid)
        if existing is None:
            await audit_admin_call(broker, admin, "revocation.lift_unknown", request)
            raise OAuthError(404, "not_found", f"no revocation with id {rid!r:.80}; "
                             "GET /v1/admin/revocations lists the active ones")
        await audit_admin_call(broker, admin, "revocation.lift_again", request)
        return JSONResponse(revocation_json(existing))
    broker.revocations.remove(rid)
    _publish_local(broker.hub, event)
    lifted = event.revocation
    record = admin_record(admin.who, admin.via, "revocation.lift", now, event="lifted",
                          details={"revocation_id": rid, "kind": lifted.kind, "value": lifted.value, "by": admin.who},
                          **_record_fields(lifted))
    try:
        await broker.auditor.write(record)
    except StoreError as exc:
        Auditor.log(record, persisted=False)
        raise StoreError(f"revocation {rid} is lifted, but its audit record could not be written: {exc}") from None
    log.warning("revocation.lifted", revocation_id=rid, kind=lifted.kind, value=lifted.value, actor=admin.who)
    return JSONResponse(revocation_json(lifted))


async def list_revocations(request: Request) -> Response:
    broker = broker_of(request)
    await require_admin(request, "revocation.list")
    kind = request.query_params.get("kind") or None
    value = request.query_params.get("value") or None
    if kind is not None and kind not in REVOCATION_KINDS:
        raise invalid_request(f"kind {kind!r:.40}: expected one of {', '.join(REVOCATION_KINDS)}")
    active = await broker.store.active_revocations()
    chosen = [r for r in active if (kind is None or r.kind == kind) and (value is None or r.value == value)]
    return JSONResponse({"revocations": [revocation_json(r) for r in chosen]}, headers={"Cache-Control": "no-store"})


def routes(guarded: Any) -> list[Route]:
    """The routes, each wrapped by the app's `guarded` (errors -> OAuth JSON, never a 500)."""
    return [
        Route("/v1/admin/revocations", guarded(create_revocation), methods=["POST"]),
        Route("/v1/admin/revocations", guarded(list_revocations), methods=["GET"]),
        Route("/v1/admin/revocations/{revocation_id}", guarded(lift_revocation), methods=["DELETE"]),
        Route("/v1/revocations/events", guarded(stream.events_endpoint), methods=["GET"]),
    ]
