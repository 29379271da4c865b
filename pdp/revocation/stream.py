"""`GET /v1/revocations/events`: who may subscribe (an admin or reader, or a workload attested
by its ServiceAccount token, as at /token), and the stream of the events it may see."""


from __future__ import annotations

import contextlib
import math
import time

import jwt
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from jitmesh.log import get_logger
from pdp.attestation.identity import AttestationError, AttestationUnavailable
from pdp.http.admin import audit_admin_call, authenticate, require_admin
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.http.services import broker_of
from pdp.revocation import events as revocation_events
from pdp.revocation import verifiers
from pdp.revocation.events import Viewer

log = get_logger("pdp.revocations")


def _unverified_exp(token: str) -> float | None:
    with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return float(exp)
    return None


async def _viewer(request: Request) -> tuple[Viewer, float | None]:
    """An admin or reader (everything), else a workload attested by its ServiceAccount token
    (as at /token). A token that is neither costs at most one bounded, rate-limited round of
    API-server reviews (pdp.admin.auth)."""
    broker = broker_of(request)
    authorization = request.headers.get("authorization")
    token = authorization.partition(" ")[2].strip() if authorization else ""
    if not token or authorization is None or authorization.partition(" ")[0].lower() != "bearer":
        raise OAuthError(401, "invalid_token", "a bearer token is required: the sidecar's ServiceAccount token "
                         "or an admin or reader token")
    if broker.admin.lists(authorization) or (broker.readers is not None and broker.readers.lists(authorization)):
        admin = await require_admin(request, "revocation.events")
        return Viewer(admin=True, name=admin.who), None
    if broker.config.attestation == "tokenreview" and broker.review_limiter is not None:
        wait = broker.review_limiter.take(request.client.host if request.client else None)
        if wait > 0:  # attesting asks the API server: a stranger's tokens count against its address
            raise OAuthError(429, "slow_down", "too many subscriptions from this address; retry later",
                             retry_after=max(1, math.ceil(min(wait, 3600.0))))
    try:
        subject = await broker.attestor.attest(token)
    except AttestationUnavailable as exc:
        raise unavailable(f"the ServiceAccount token cannot be verified right now: {exc}") from None
    except AttestationError as exc:
        if broker.reviewer is not None:
            admin = await require_admin(request, "revocation.events")
            return Viewer(admin=True, name=admin.who), None
        raise OAuthError(401, "invalid_token", f"the bearer token is neither an admin or reader token nor an "
                         f"acceptable ServiceAccount token: {exc}") from None
    if broker.reviewer is not None:  # a workload that is also a reader or admin follows everything
        try:
            elevated = await authenticate(request)
        except OAuthError:
            elevated = None  # the API server cannot tell now: the narrower view, never more
        if elevated is not None:
            await audit_admin_call(broker, elevated, "revocation.events", request)
            return Viewer(admin=True, name=elevated.who), None
    exp = _unverified_exp(token)
    ends_at = None if exp is None else time.monotonic() + max(0.0, exp - time.time())
    requested = verifiers.requested_audiences(request.query_params.getlist("audience"))
    audiences = None if requested is None else await verifiers.served_audiences(broker, subject, requested)
    return Viewer(admin=False, subject=subject.sub, pod_uid=subject.pod.uid if subject.pod else None,
                  name=subject.sub, audiences=audiences), ends_at


async def events_endpoint(request: Request) -> Response:
    broker = broker_of(request)
    hub = broker.hub
    assert hub is not None, "the event hub starts with the broker"
    try:
        last = revocation_events.parse_last_event_id(request.headers.get("last-event-id"),
                                                     request.query_params.get("last_event_id"))
    except ValueError as exc:
        raise invalid_request(str(exc)) from None
    viewer, ends_at = await _viewer(request)
    server = getattr(request.app.state, "uvicorn_server", None)
    if hub.stopping is None and server is not None:
        hub.stopping = lambda: bool(server.should_exit)
    await hub.epoch()  # read once; a store that cannot answer is a 503 here, not a broken stream
    try:
        sub = hub.open(viewer)  # before the response starts, so a refusal is a status, not a dropped stream
    except revocation_events.TooManyStreams as exc:
        log.warning("events.refused", viewer=viewer.name, streams=hub.streams, reason=str(exc))
        raise OAuthError(503, "temporarily_unavailable", str(exc),
                         retry_after=revocation_events.RETRY_AFTER_FULL) from None
    log.info("events.subscribed", viewer=viewer.name, admin=viewer.admin,
             last_event_id=None if last is None else f"{last.epoch}-{last.seq}", streams=hub.streams)
    body = revocation_events.stream(hub, broker.store, viewer, last, ends_at=ends_at, sub=sub)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
