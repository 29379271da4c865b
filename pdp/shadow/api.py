"""`GET /v1/admin/shadow/report`: the live shadow report for admins."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jitmesh.log import get_logger
from pdp.http.admin import require_admin
from pdp.http.body import parse_time
from pdp.http.errors import guarded
from pdp.http.services import broker_of
from pdp.shadow.live import live_report

log = get_logger("pdp")


@guarded
async def shadow_report_endpoint(request: Request) -> Response:
    """docs/contract.md §6; the document is pdp/shadow/report.py's, `since`/`until` as for the audit."""
    broker = broker_of(request)
    await require_admin(request, request.url.path)
    q = request.query_params
    since = parse_time(q["since"], "since") if q.get("since") else None
    until = parse_time(q["until"], "until") if q.get("until") else None
    return JSONResponse(await live_report(broker.store, broker.shadow, since=since, until=until, now=broker.clock(),
                                          enforced_policy=broker.config.policy_path,
                                          candidate_policy=broker.config.shadow_policy_path))
