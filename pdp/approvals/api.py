"""Human approval of access requests (the broker's side of `authorization_pending`).

When the policy answers `approval_required`, the broker opens an access request for the
subject, audience and scopes (pdp/exchange.py) and answers `authorization_pending` with its
id; the sidecar polls with that id at the broker's interval. An admin lists the pending
requests and approves or denies one:

- `GET /v1/admin/access-requests?status=pending|approved|denied&limit=N`
- `POST /v1/admin/access-requests/{id}/approve` and `.../deny`, JSON `{"reason": "..."}`
  (required to deny, optional to approve: a ticket number, say).

The next poll runs the policy again with `input.approval` set (docs/contract.md §3): the shipped
policy then allows, or denies with "the approval ... was refused". An approval covers new
tokens for that subject, audience and scopes for `--approval-ttl` seconds; a refusal stands
as long. Every decision is audited with the admin who made it.
"""

from __future__ import annotations

from typing import Any, Final, cast, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitmesh.log import get_logger
from pdp.audit import Auditor
from pdp.decision import rfc3339
from pdp.http.admin import admin_record, audit_admin_call, require_admin
from pdp.http.body import check_reason, int_param, parse_json, read_body
from pdp.http.errors import OAuthError, invalid_request
from pdp.http.services import broker_of
from pdp.store.base import AccessRequest, AccessRequestStatus, Store, StoreError

log = get_logger("pdp.approvals")

MAX_DECISION_BODY: Final = 16 * 1024
RETENTION_SECONDS: Final = 30 * 86400.0  # access requests are purged a month after they lapsed or ran out
STATUSES: Final[tuple[str, ...]] = get_args(AccessRequestStatus)


def access_request_json(r: AccessRequest) -> dict[str, Any]:
    return {"id": r.id, "subject": r.subject, "audience": r.audience, "scopes": list(r.scopes), "pod_uid": r.pod_uid,
            "status": r.status, "created_at": rfc3339(r.created_at), "expires_at": rfc3339(r.expires_at),
            "decided_by": r.decided_by, "decided_at": rfc3339(r.decided_at) if r.decided_at is not None else None,
            "reason": r.reason}


def parse_reason(body: bytes, content_type: str | None, required: bool) -> str | None:
    """The `reason` of an approve or deny body, strictly; an empty body is no reason."""
    doc: Any = parse_json(body, content_type) if body.strip() else {}
    if not isinstance(doc, dict):
        raise invalid_request(f'the body must be a JSON object like {{"reason": "..."}}, not a {type(doc).__name__}')
    unknown = sorted(set(doc) - {"reason"})
    if unknown:
        raise invalid_request(f"unknown field(s) {', '.join(repr(u)[:60] for u in unknown[:5])}; expected reason")
    return check_reason(doc.get("reason"), "a reason is required to deny: say why, it goes into the audit trail "
                        "and to the workload" if required else None)


async def list_access_requests(request: Request) -> Response:
    broker = broker_of(request)
    await require_admin(request, "access_request.list")
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise invalid_request(f"status {status!r:.40}: expected one of {', '.join(STATUSES)}")
    limit = int_param(request.query_params.get("limit"), "limit", 1, 1000, 100) or 100
    found = await broker.store.list_access_requests(cast(AccessRequestStatus | None, status), broker.clock(), limit)
    return JSONResponse({"access_requests": [access_request_json(r) for r in found]},
                        headers={"Cache-Control": "no-store"})


async def _decide(request: Request, status: AccessRequestStatus) -> Response:
    broker = broker_of(request)
    admin = await require_admin(request)
    rid = request.path_params["request_id"]
    reason = parse_reason(await read_body(request, MAX_DECISION_BODY), request.headers.get("content-type"),
                          required=status == "denied")
    now = broker.clock()
    decided = await broker.store.decide_access_request(rid, status, admin.who, now, reason,
                                                       now + broker.config.approval_ttl)
    action = "access_request.approve" if status == "approved" else "access_request.deny"
    if decided is None:
        existing = await broker.store.get_access_request(rid)
        await audit_admin_call(broker, admin, f"{action}_{'unknown' if existing is None else 'refused'}", request)
        if existing is None:
            raise OAuthError(404, "not_found", f"no access request with id {rid!r:.80}; "
                             "GET /v1/admin/access-requests?status=pending lists the open ones")
        why = (f"it was {existing.status} by {existing.decided_by}" if existing.status != "pending"
               else "it lapsed unanswered; the workload's next request opens a new one")
        raise OAuthError(409, "conflict", f"access request {rid} cannot be {status}: {why}")
    record = admin_record(admin.who, admin.via, action, now, event=f"access_{status}",
                          details={"access_request_id": rid, "reason": reason, "by": admin.who,
                                   "covers_until": rfc3339(decided.expires_at)},
                          subject=decided.subject, audience=decided.audience, pod_uid=decided.pod_uid)
    try:
        await broker.auditor.write(record)
    except StoreError as exc:
        Auditor.log(record, persisted=False)
        raise StoreError(f"access request {rid} is {status}, but its audit record could not be written: {exc}") \
            from None
    log.warning(f"access_request.{status}", access_request_id=rid, subject=decided.subject,
                audience=decided.audience, scopes=" ".join(decided.scopes), actor=admin.who, reason=reason)
    return JSONResponse(access_request_json(decided), headers={"Cache-Control": "no-store"})


async def approve(request: Request) -> Response:
    return await _decide(request, "approved")


async def deny(request: Request) -> Response:
    return await _decide(request, "denied")


async def purge(store: Store, now: float) -> int:
    """Drop the access requests that lapsed or ran out more than RETENTION_SECONDS ago (the
    audit trail keeps every decision); how many went."""
    before = now - RETENTION_SECONDS
    count = await store.purge_access_requests(before)
    if count:
        log.info("access_requests.purged", count=count, lapsed_before=before)
    return count


def routes(guarded: Any) -> list[Route]:
    """The routes, each wrapped by the app's `guarded` (errors -> OAuth JSON, never a 500)."""
    return [
        Route("/v1/admin/access-requests", guarded(list_access_requests), methods=["GET"]),
        Route("/v1/admin/access-requests/{request_id}/approve", guarded(approve), methods=["POST"]),
        Route("/v1/admin/access-requests/{request_id}/deny", guarded(deny), methods=["POST"]),
    ]
