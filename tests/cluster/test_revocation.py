"""Revocation on a real cluster: a deleted pod loses its tokens; a killed broker loses nothing."""

from __future__ import annotations

import time
from typing import Any

from tests.cluster.conftest import Kube, Release
from tests.cluster.workloads import RELEASE_NAMESPACE, app_container, pod, read_token_file

DEMO_AUDIENCE = "orders-api"


def _revocations(cluster: Kube) -> list[dict[str, Any]]:
    r = cluster.broker("GET", "/v1/admin/revocations")
    assert r.status_code == 200, f"listing revocations: HTTP {r.status_code} {r.text}"
    body = r.json()
    return list(body["revocations"] if isinstance(body, dict) else body)


def test_deleting_an_injected_pod_revokes_its_tokens_at_the_broker_and_the_sidecar_revokes_first(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    cluster.create(ns, pod("doomed", {}, {"jitmesh.io/audiences": DEMO_AUDIENCE},
                        [app_container(DEMO_AUDIENCE, print_token=True)], "demo-app"))
    p = cluster.wait_verified(ns, "doomed")
    token = cluster.app_report(ns, "doomed")["token"]
    jti = cluster.introspect(token)["jti"]
    assert cluster.introspect(token)["active"] is True

    cluster.run("kubectl", "delete", "pod", "doomed", "-n", ns, "--wait=false")

    def revoked_by_podwatch() -> dict[str, Any] | None:
        if cluster.introspect(token)["active"]:
            return None
        return next((r for r in _revocations(cluster) if r["kind"] == "pod_uid" and r["value"] == p.metadata.uid), None)

    by_pod = cluster.wait("the broker revoked the deleted pod (pod watcher)", revoked_by_podwatch, 120, ns)
    assert by_pod["created_by"] == "system:podwatch"
    by_holder = [r for r in _revocations(cluster) if r["kind"] == "jti" and r["value"] == jti]
    assert by_holder, "the sidecar did not revoke its own token on SIGTERM"
    assert by_holder[0]["reason"] == "revoked by holder"
    assert by_holder[0]["created_at"] <= by_pod["created_at"], "the sidecar's own revocation came first"


def test_killed_broker_keeps_keys_and_revocations_while_pods_keep_serving_and_then_refresh(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    cluster.create(ns, pod("survivor", {}, {"jitmesh.io/audiences": DEMO_AUDIENCE, "jitmesh.io/ttl": "120"},
                        [app_container(DEMO_AUDIENCE, print_token=True)], "demo-app"))
    cluster.wait_verified(ns, "survivor")
    kids = {k["kid"] for k in cluster.broker("GET", "/jwks").json()["keys"]}
    revocation = cluster.broker("POST", "/v1/admin/revocations", json={
        "subject": "system:serviceaccount:demo:ghost", "reason": "cluster test: survives restarts"})
    assert revocation.status_code == 201, revocation.text
    revocation_id = revocation.json()["id"]
    old = cluster.pods(RELEASE_NAMESPACE, "app.kubernetes.io/component=broker")
    assert len(old) == 1

    cluster.run("kubectl", "delete", "pod", old[0].metadata.name, "-n", RELEASE_NAMESPACE, "--grace-period=0",
             "--force", "--wait=false")
    killed_at = time.time()
    # while no broker answers, the pod still has a token, on disk and from its local API
    held = cluster.exec(ns, "survivor", "app", read_token_file(DEMO_AUDIENCE)).strip()
    assert held.count(".") == 2, f"no token on disk while the broker is down: {held!r}"
    local = cluster.exec(ns, "survivor", "app", "import os, urllib.request as u; print(u.urlopen(os.environ["
                      f"'JITMESH_AGENT_URL'] + '/v1/token/{DEMO_AUDIENCE}', timeout=5).status)").strip()
    assert local == "200"

    def replaced() -> bool:
        pods = cluster.pods(RELEASE_NAMESPACE, "app.kubernetes.io/component=broker")
        return any(p.metadata.uid != old[0].metadata.uid and p.status.container_statuses
                   and all(s.ready for s in p.status.container_statuses) for p in pods)

    cluster.wait("a replacement broker ready", replaced, 300, RELEASE_NAMESPACE)
    assert kids <= {k["kid"] for k in cluster.broker("GET", "/jwks").json()["keys"]}, "the new broker has new keys"
    assert revocation_id in {r["id"] for r in _revocations(cluster)}, "the revocation was lost"
    assert cluster.introspect(held)["active"] is True, "a still-valid token stays valid across the restart"

    def refreshed() -> str | None:
        now = cluster.exec(ns, "survivor", "app", read_token_file(DEMO_AUDIENCE)).strip()
        claims = cluster.introspect(now)
        return now if now != held and claims["active"] and claims["iat"] >= int(killed_at) else None

    cluster.wait("the sidecar refreshed from the new broker", refreshed, 180, ns)
    cluster.core.delete_namespaced_pod("survivor", ns, grace_period_seconds=0)
