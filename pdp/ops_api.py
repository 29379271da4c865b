"""Operations: `/healthz`, `/readyz`, `/metrics`, and the audit trail for admins at
`/v1/admin/audit`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jitmesh.contract import check_audit_event
from jitmesh.log import get_logger
from pdp.audit import record_json
from pdp.http import admin as http_admin
from pdp.http.body import int_param, parse_time
from pdp.http.errors import guarded, invalid_request
from pdp.http.services import broker_of
from pdp.store.base import StoreError

log = get_logger("pdp")

AUDIT_MAX_LIMIT = 1000


async def require_admin(request: Request) -> None:
    await http_admin.require_admin(request, request.url.path)


# --- operations ---------------------------------------------------------------------------

async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@guarded
async def readyz(request: Request) -> Response:
    broker = broker_of(request)
    checks: dict[str, str] = {}
    checks["opa"] = "ok" if await broker.opa.healthy() else "unreachable"
    try:
        await broker.store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = f"error: {exc}"
    try:
        broker.revocations.check_fresh()
        checks["revocations"] = "ok"
    except Exception as exc:
        checks["revocations"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unready", "checks": checks},
                        status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(broker_of(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@guarded
async def audit_endpoint(request: Request) -> Response:
    broker = broker_of(request)
    await require_admin(request)
    q = request.query_params
    if q.get("event"):
        try:
            check_audit_event(q["event"])
        except ValueError as exc:
            raise invalid_request(str(exc)) from None
    since = parse_time(q["since"], "since") if q.get("since") else None
    until = parse_time(q["until"], "until") if q.get("until") else None
    limit = int_param(q.get("limit"), "limit", 1, AUDIT_MAX_LIMIT, 100)
    after_seq = int_param(q.get("after_seq"), "after_seq", 0, 2**62, None)
    records = await broker.store.query_audit(
        since=since, until=until, subject=q.get("subject") or None, event=q.get("event") or None,
        audience=q.get("audience") or None, decision_id=q.get("decision_id") or None,
        after_seq=after_seq, limit=limit or 100)
    next_seq = records[-1].seq if records else after_seq
    return JSONResponse({"records": [record_json(r) for r in records], "next_seq": next_seq})
