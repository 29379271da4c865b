"""The access proxy on a real cluster: a server injected with `jitmesh.io/protect` admits the
token of an injected caller, refuses what the access policy forbids, and refuses the caller
within a second of `jitmesh revoke --subject`, learned from the broker's event stream."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

from tests.cluster.conftest import Kube, Release, jitmesh_cli
from tests.cluster.workloads import BROKER, RELEASE_NAMESPACE, caller_container, pod, server_container, service

AUDIENCE = "orders-api"
CALLER_SUBJECT = "system:serviceaccount:demo:demo-app"
ALLOWED, FORBIDDEN = "/orders/1", "/admin/export"  # the shipped policy has no endpoint /admin/...


def _ready(cluster: Kube, ns: str, name: str) -> bool:
    p = cluster.pod(ns, name)
    statuses = (p.status.container_statuses or []) + (p.status.init_container_statuses or [])
    return p.status.phase == "Running" and bool(statuses) and all(
        s.ready for s in statuses if s.name != "jitmesh-sidecar" or s.started is not None)


def _calls(cluster: Kube, ns: str, name: str) -> list[tuple[float, str, int, dict[str, Any]]]:
    """The caller's CALL lines: (time, path, status, what came back)."""
    log = str(cluster.core.read_namespaced_pod_log(name, ns, container="app", since_seconds=120))
    calls = []
    for line in log.splitlines():
        word, _, rest = line.partition(" ")
        if word != "CALL":
            continue
        at, path, status, body = rest.split(" ", 3)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"raw": body}
        calls.append((float(at), path, int(status), doc))
    return calls


def _revoke(cluster: Kube, *args: str) -> dict[str, Any]:
    """`jitmesh revoke ...` as an admin types it, from the cluster's network."""
    token_file = cluster.node.dir / "proxy-test-admin-token"
    token_file.write_text(cluster.broker_admin_token() + "\n")
    ip = cluster.core.read_namespaced_service(BROKER, RELEASE_NAMESPACE).spec.cluster_ip
    out = cluster.node.netns.run(jitmesh_cli(), "revoke", *args, "--json", "--broker-url", f"http://{ip}:8080",
                                 "--admin-token-file", str(token_file))
    return dict(json.loads(out.stdout))


def test_a_protected_server_admits_its_caller_refuses_a_forbidden_endpoint_and_a_revoked_caller_within_a_second(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    cluster.service_account(ns, "orders")  # the shipped policy lets demo/orders serve orders-api
    cluster.create(ns, pod("orders-server", {"app": "orders-server"},
                           {"jitmesh.io/protect": "8443=8080", "jitmesh.io/serves": AUDIENCE},
                           [server_container()], "orders"))
    cluster.create(ns, service("orders", {"app": "orders-server"}, 80, 8443))
    cluster.wait("the protected server ready (its proxy has keys, events and policy)",
                 lambda: _ready(cluster, ns, "orders-server"), 300, ns)
    server = cluster.pod(ns, "orders-server")
    assert [c.name for c in server.spec.containers + (server.spec.init_containers or [])
            if c.name == "jitmesh-proxy"], "no jitmesh-proxy container was injected"

    cluster.create(ns, pod("orders-caller", {}, {"jitmesh.io/audiences": AUDIENCE,
                                                 f"jitmesh.io/scopes.{AUDIENCE}": "read"},
                           [caller_container(AUDIENCE, f"http://orders.{ns}.svc", [ALLOWED, FORBIDDEN])],
                           "demo-app"))
    lifted: str | None = None
    try:
        def answered() -> bool:
            seen = {(path, status) for _, path, status, _ in _calls(cluster, ns, "orders-caller")}
            return (ALLOWED, 200) in seen and (FORBIDDEN, 403) in seen

        cluster.wait("the caller admitted on an allowed endpoint and refused on a forbidden one", answered, 300, ns)
        calls = _calls(cluster, ns, "orders-caller")
        ok = next(doc for _, path, status, doc in calls if path == ALLOWED and status == 200)
        assert ok["jitmesh"]["x-jitmesh-subject"] == CALLER_SUBJECT
        assert ok["jitmesh"]["x-jitmesh-scope"] == "read" and ok["jitmesh"]["x-jitmesh-decision-id"]
        assert ok["saw_token"] is False, "the upstream saw the caller's token"
        denied = next(doc for _, path, status, doc in calls if path == FORBIDDEN and status == 403)
        assert json.loads(denied["body"])["error"] == "access_denied"

        revocation = _revoke(cluster, "--subject", CALLER_SUBJECT, "--reason", "cluster test: proxy refuses")
        revoked_at = time.time()
        lifted = str(revocation["id"])
        time.sleep(3)
        after = [(at, status, doc) for at, path, status, doc in _calls(cluster, ns, "orders-caller")
                 if path == ALLOWED and at > revoked_at]
        assert after, "the caller made no call after the revocation"
        first_refused = next(((at, doc) for at, status, doc in after if status == 401), None)
        assert first_refused is not None, f"never refused after the revocation: {after[-3:]}"
        assert first_refused[0] - revoked_at <= 1.0, \
            f"the first 401 came {first_refused[0] - revoked_at:.2f}s after the revocation"
        assert "revoked" in (first_refused[1].get("www-authenticate") or ""), first_refused[1]
        late = [(at, status) for at, status, _ in after if at > revoked_at + 1.0 and status != 401]
        assert not late, f"admitted more than a second after the revocation: {late[:3]}"
    finally:
        if lifted is not None:
            _revoke(cluster, "--lift", lifted)
        for name in ("orders-caller", "orders-server"):
            try:
                cluster.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            except client.ApiException:
                pass
        try:
            cluster.core.delete_namespaced_service("orders", ns)
        except client.ApiException:
            pass
