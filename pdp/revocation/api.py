"""The broker's revocation surface (docs/contract.md §2): the admin API for revocations,
the revocation event stream, Kubernetes admins, the pod watcher, and audit of admin calls.

- `POST /v1/admin/revocations`: JSON with exactly one of `jti`, `subject`, `pod_uid`,
  `audience`, and a `reason`; 201 with the revocation (`id` included). A subject, pod or
  audience revocation also refuses new issuance until it is lifted, on every replica
  sharing the store (each follows the store's event log).
- `DELETE /v1/admin/revocations/{id}`: lift; 200 with the lifted revocation, 404 when the
  id is unknown (lifting twice answers the already lifted revocation).
- `GET /v1/admin/revocations[?kind=&value=]`: the active revocations.
- `GET /v1/revocations/events`: `pdp.revocation_events`.

Every admin call is audited with who made it (`details.actor`, `pdp.admin_auth`):
revocations and lifts each as a `revoked`/`lifted` record; reads (introspection, audit and
report queries, revocation lists, event streams) as `admin` records, the first of each
minute per admin and endpoint in the store and every one in the JSON log.

`create_app` (pdp/app.py) calls `start(app, broker)` once the broker is assembled,
`routes()` for the routes, `require_admin` for its own admin endpoints, `verify_token`
to verify one of our tokens (reloading keys from the store on an unknown `kid`, so a key
another replica just rotated in verifies at once) and `note_issued` after each issuance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jitmesh.contract import KUBERNETES_CLAIM, MAX_REASON_CHARS, SERVICEACCOUNT_SUB_PREFIX
from jitmesh.log import get_logger
from pdp.admin.auth import KubeAdminReviewer
from pdp.attestation.verify import AttestationError, AttestationUnavailable, load_kube_api_client
from pdp.audit import Auditor
from pdp.http.admin import admin_record, audit_admin_call, require_admin
from pdp.http.body import read_body
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.http.services import Broker, broker_of
from pdp.revocation import events as revocation_events
from pdp.revocation.events import EventHub, Viewer
from pdp.revocation.podwatch import ACTOR as PODWATCH_ACTOR
from pdp.revocation.podwatch import IssuedPod, PodWatch
from pdp.revocation.podwatch import revocation_id as pod_revocation_id
from pdp.store.base import REVOCATION_KINDS, Revocation, RevocationEvent, RevocationKind, StoreError

log = get_logger("pdp.revocations")

MAX_REVOCATION_BODY = 16 * 1024
MAX_VALUE_CHARS = 256
KEY_RELOAD_MIN_INTERVAL = 1.0
AUDIT_PAGES_AT_START = 50


# --- revocations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RevocationRequest:
    kind: RevocationKind
    value: str
    reason: str


def parse_revocation_request(body: bytes, content_type: str | None) -> RevocationRequest:
    """The JSON body of `POST /v1/admin/revocations`, strictly."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json":
        raise invalid_request(f"the body must be application/json, not {media!r:.80}")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_request(f"the body is not valid JSON: {exc}"[:200]) from None
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
    reason = doc.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        raise invalid_request(f"reason is required: a non-empty string of at most {MAX_REASON_CHARS} characters "
                              "saying why")
    return RevocationRequest(kind=kind, value=value, reason=reason.strip())


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
                 hub: EventHub | None = None) -> Revocation:
    """Store a revocation (in effect at once on this replica, and on the others as they
    follow the log), then its audit record. StoreError when the store refuses either."""
    revocation = Revocation(id=revocation_id or str(uuid.uuid4()), kind=kind, value=value, reason=reason,
                            created_at=broker.clock(), created_by=who, expires_at=expires_at)
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


async def create_revocation(request: Request) -> Response:
    broker = broker_of(request)
    admin = await require_admin(request)
    req = parse_revocation_request(await read_body(request, MAX_REVOCATION_BODY), request.headers.get("content-type"))
    revocation = await revoke(broker, req.kind, req.value, req.reason, admin.who, admin.via,
                              hub=broker.hub)
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


# --- the event stream ----------------------------------------------------------------------

def _unverified_exp(token: str) -> float | None:
    with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return float(exp)
    return None


async def _viewer(request: Request) -> tuple[Viewer, float | None]:
    """Admin, else a workload attested by its ServiceAccount token (as at /token)."""
    broker = broker_of(request)
    authorization = request.headers.get("authorization")
    token = authorization.partition(" ")[2].strip() if authorization else ""
    if not token or authorization is None or authorization.partition(" ")[0].lower() != "bearer":
        raise OAuthError(401, "invalid_token", "a bearer token is required: the sidecar's ServiceAccount token "
                         "or an admin token")
    if broker.admin.is_admin(authorization):
        admin = await require_admin(request, "revocation.events")
        return Viewer(admin=True, name=admin.who), None
    try:
        subject = await broker.attestor.attest(token)
    except AttestationUnavailable as exc:
        raise unavailable(f"the ServiceAccount token cannot be verified right now: {exc}") from None
    except AttestationError as exc:
        if broker.reviewer is not None:
            admin = await require_admin(request, "revocation.events")
            return Viewer(admin=True, name=admin.who), None
        raise OAuthError(401, "invalid_token", f"the bearer token is neither an admin token nor an acceptable "
                         f"ServiceAccount token: {exc}") from None
    exp = _unverified_exp(token)
    ends_at = None if exp is None else time.monotonic() + max(0.0, exp - time.time())
    return Viewer(admin=False, subject=subject.sub, pod_uid=subject.pod.uid if subject.pod else None,
                  name=subject.sub), ends_at


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

    def stopping() -> bool:
        return bool(server is not None and server.should_exit)

    log.info("events.subscribed", viewer=viewer.name, admin=viewer.admin, last_event_id=last,
             streams=hub.streams + 1)
    body = revocation_events.stream(hub, broker.store, viewer, last, ends_at=ends_at, stopping=stopping)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# --- keys of other replicas ----------------------------------------------------------------

async def verify_token(broker: Broker, token: str) -> dict[str, Any] | None:
    """`KeyRing.verify`, reloading the keys from the store (at most once a second) when the
    token names a kid this replica has not loaded yet."""
    claims = broker.keys.verify(token, broker.config.issuer)
    if claims is not None:
        return claims
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    known = {k.get("kid") for k in broker.keys.jwks().get("keys", [])}
    now = time.monotonic()
    if not isinstance(kid, str) or kid in known or now - broker.last_key_reload < KEY_RELOAD_MIN_INTERVAL:
        return None
    broker.last_key_reload = now
    try:
        await broker.keys.refresh(broker.clock())
    except StoreError as exc:
        log.warning("keys.reload_failed", kid=kid, error=str(exc))
        return None
    return broker.keys.verify(token, broker.config.issuer)


# --- the pod watcher ---------------------------------------------------------------------------

def note_issued(broker: Broker, access_token: str) -> None:
    """After an issuance: remember the token's pod for the pod watcher."""
    if broker.podwatch is None:
        return
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return
    k8s = claims.get(KUBERNETES_CLAIM) or {}
    pod = k8s.get("pod") if isinstance(k8s, dict) else None
    if isinstance(pod, dict) and pod.get("uid") and pod.get("name") and k8s.get("namespace"):
        broker.podwatch.issued(str(k8s["namespace"]), str(pod["name"]), str(pod["uid"]), float(claims["exp"]))


async def _remember_recent_pods(broker: Broker, podwatch: PodWatch) -> None:
    """Pods issued to (by any replica) within the last --max-ttl, from the audit trail."""
    now = broker.clock()
    after: int | None = None
    for _ in range(AUDIT_PAGES_AT_START):
        page = await broker.store.query_audit(event="issued", since=now - broker.config.max_ttl, after_seq=after,
                                              limit=1000)
        for rec in page:
            pod = ((rec.details.get("input") or {}).get("subject") or {}).get("pod") or {}
            ns = ((rec.details.get("input") or {}).get("subject") or {}).get("namespace")
            exp = rec.details.get("exp")
            if rec.pod_uid and pod.get("name") and ns and isinstance(exp, (int, float)) and exp > now:
                podwatch.issued(ns, pod["name"], rec.pod_uid, float(exp))
        if len(page) < 1000:
            return
        after = page[-1].seq


def _podwatch_revoker(broker: Broker, hub: EventHub) -> Any:
    async def revoke_pod(pod: IssuedPod) -> None:
        if broker.revocations.lookup("pod_uid", pod.uid) is not None:
            return
        try:
            await revoke(broker, "pod_uid", pod.uid, f"pod {pod.namespace}/{pod.name} was deleted", PODWATCH_ACTOR,
                         "podwatch", revocation_id=pod_revocation_id(pod.uid), expires_at=pod.until, hub=hub)
        except StoreError:
            if await broker.store.get_revocation(pod_revocation_id(pod.uid)) is not None:
                return  # another replica saw the deletion first
            raise
    return revoke_pod


# --- assembly ----------------------------------------------------------------------------------

def has_kube_client(broker: Broker) -> bool:
    c = broker.config
    return c.attestation == "tokenreview" or c.pod_lookup or c.kubeconfig is not None


def start(broker: Broker) -> list[asyncio.Task[Any]]:
    """Give a started broker its event hub, Kubernetes admins and pod watcher; the tasks
    returned stop with it."""
    hub = EventHub(broker.store, broker.revocations.seq)
    broker.hub = hub
    if has_kube_client(broker):
        api_client = load_kube_api_client(broker.config.kubeconfig)
        broker.reviewer = KubeAdminReviewer(api_client)
        broker.podwatch = PodWatch(api_client, _podwatch_revoker(broker, hub), clock=broker.clock)
    streams = Gauge("jitmesh_revocation_event_streams", "Open GET /v1/revocations/events streams",
                    registry=broker.metrics.registry)
    streams.set_function(lambda: hub.streams)
    followed = Gauge("jitmesh_revocation_events_seq", "Sequence number of the last revocation event followed",
                     registry=broker.metrics.registry)
    followed.set_function(lambda: hub.seq)
    tasks = [asyncio.create_task(hub.run(), name="revocation-events")]
    if broker.podwatch is not None:
        podwatch = broker.podwatch

        async def run_podwatch() -> None:
            with contextlib.suppress(StoreError):
                await _remember_recent_pods(broker, podwatch)
            await podwatch.run()

        tasks.append(asyncio.create_task(run_podwatch(), name="podwatch"))
    return tasks


def routes(guarded: Any) -> list[Route]:
    """The routes, each wrapped by the app's `guarded` (errors -> OAuth JSON, never a 500)."""
    return [
        Route("/v1/admin/revocations", guarded(create_revocation), methods=["POST"]),
        Route("/v1/admin/revocations", guarded(list_revocations), methods=["GET"]),
        Route("/v1/admin/revocations/{revocation_id}", guarded(lift_revocation), methods=["DELETE"]),
        Route("/v1/revocations/events", guarded(events_endpoint), methods=["GET"]),
    ]
