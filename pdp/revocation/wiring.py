"""The revocation services a started broker gets: its event hub, Kubernetes admins, and the
pod watcher that revokes the tokens of deleted pods (fed by `note_issued` after each issuance)."""


from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import jwt
from prometheus_client import Gauge

from jitmesh.contract import KUBERNETES_CLAIM
from jitmesh.log import get_logger
from pdp.admin.auth import AddressLimiter, KubeAdminReviewer
from pdp.attestation.kube import ApiServerCalls, load_kube_api_client
from pdp.http.services import Broker
from pdp.revocation.api import revoke
from pdp.revocation.events import EventHub
from pdp.revocation.podwatch import ACTOR as PODWATCH_ACTOR
from pdp.revocation.podwatch import IssuedPod, PodWatch
from pdp.revocation.podwatch import revocation_id as pod_revocation_id
from pdp.store.base import StoreError

log = get_logger("pdp.revocations")

AUDIT_PAGES_AT_START = 50  # pages of 1,000 issuances read to rebuild the pod list at start


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
    index = broker.revocations
    hub = EventHub(broker.store, index.seq, max_streams=broker.config.max_event_streams,
                   max_per_subject=broker.config.max_event_streams_per_subject, snapshot=index.snapshot,
                   lifted_window=index.lifted_window)
    broker.hub = hub
    if has_kube_client(broker):
        api_client = load_kube_api_client(broker.config.kubeconfig)
        c = broker.config
        broker.review_limiter = AddressLimiter(c.admin_review_rate, c.admin_review_burst)
        broker.reviewer = KubeAdminReviewer(api_client, broker.apiserver or ApiServerCalls(),
                                            audience=c.subject_audience, limiter=broker.review_limiter)
        broker.podwatch = PodWatch(api_client, _podwatch_revoker(broker, hub), clock=broker.clock)
    streams = Gauge("jitmesh_revocation_event_streams", "Open GET /v1/revocations/events streams",
                    registry=broker.metrics.registry)
    streams.set_function(lambda: hub.streams)
    followed = Gauge("jitmesh_revocation_events_seq", "Sequence number of the last revocation event followed",
                     registry=broker.metrics.registry)
    followed.set_function(lambda: hub.seq)
    tasks = [asyncio.create_task(hub.run(), name="revocation-events"),
             asyncio.create_task(hub.watch_shutdown(), name="revocation-events-shutdown")]
    if broker.podwatch is not None:
        podwatch = broker.podwatch

        async def run_podwatch() -> None:
            with contextlib.suppress(StoreError):
                await _remember_recent_pods(broker, podwatch)
            await podwatch.run()

        tasks.append(asyncio.create_task(run_podwatch(), name="podwatch"))
    return tasks


