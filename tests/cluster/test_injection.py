"""Injection on real pods: who gets the sidecar, the app starting only with its token, Jobs."""

from __future__ import annotations

import json
import time

from kubernetes import utils

from tests.cluster.conftest import TIMINGS, Kube, Release
from tests.cluster.workloads import BROKER_URL, SIDECAR, app_container, deployment, job, pause_container, pod

DEMO_AUDIENCE = "orders-api"  # granted to demo/demo-app by the shipped policy


def _sidecar_names(p: object) -> list[str]:
    spec = p.spec  # type: ignore[attr-defined]
    return [c.name for c in (spec.init_containers or []) + spec.containers if c.name == SIDECAR]


def _verified_claims(cluster: Kube, ns: str, pod_name: str) -> dict[str, object]:
    log = cluster.logs(ns, pod_name, "app")
    line = next((x for x in log.splitlines() if x.startswith("VERIFIED ")), None)
    assert line is not None, f"the app did not verify its token:\n{log}\n{cluster.evidence(ns)}"
    assert "READYZ 200" in log, f"the sidecar's /readyz did not pass for the app:\n{log}"
    return dict(json.loads(line.removeprefix("VERIFIED ")))


def test_deployment_in_labelled_namespace_starts_app_only_with_a_token_that_verifies_against_the_broker(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    created = time.monotonic()
    utils.create_from_dict(cluster.api, deployment("verify", {"jitmesh.io/audiences": DEMO_AUDIENCE},
                                                [app_container(DEMO_AUDIENCE)], "demo-app"), namespace=ns)

    def running() -> object:
        pods = cluster.pods(ns, "app=verify")
        return pods and pods[0].status.phase == "Running" and "VERIFIED " in cluster.logs(ns, pods[0].metadata.name,
                                                                                       "app") and pods[0]

    p = cluster.wait("the injected Deployment's app verified its token", running, 300, ns)
    TIMINGS.setdefault("first injected Deployment: created to app verified", time.monotonic() - created)
    assert _sidecar_names(p) == [SIDECAR], "exactly one sidecar is injected"
    assert p.metadata.annotations.get("jitmesh.io/status") == "injected"
    claims = _verified_claims(cluster, ns, p.metadata.name)
    assert claims["sub"] == "system:serviceaccount:demo:demo-app"
    assert claims["aud"] == DEMO_AUDIENCE
    assert claims["iss"] == BROKER_URL, "the token verifies against the issuer the app reaches through the Service"
    app = next(s for s in p.status.container_statuses if s.name == "app")
    assert app.restart_count == 0, "the app never started without its token file"
    side = next(s for s in (p.status.init_container_statuses or []) if s.name == SIDECAR)
    assert side.started and side.ready, f"sidecar started={side.started} ready={side.ready}"
    cluster.apps.delete_namespaced_deployment("verify", ns)


def test_pods_opted_out_or_in_unlabelled_namespaces_run_without_a_sidecar(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    plain = cluster.namespace()
    utils.create_from_dict(cluster.api, pod("opted-out", {"jitmesh.io/inject": "false"}, {},
                                         [pause_container()]), namespace=demo_namespace)
    utils.create_from_dict(cluster.api, pod("plain", {}, {}, [pause_container()]), namespace=plain)
    for ns, name in ((demo_namespace, "opted-out"), (plain, "plain")):
        p = cluster.wait(f"pod {ns}/{name} Running", lambda ns=ns, name=name: (
            (x := cluster.pod(ns, name)).status.phase == "Running" and x), 180, ns)
        assert _sidecar_names(p) == [], f"{ns}/{name} got a sidecar"
        assert "jitmesh.io/status" not in (p.metadata.annotations or {})
        assert [c.name for c in p.spec.containers] == ["app"]
    cluster.core.delete_namespaced_pod("opted-out", demo_namespace, grace_period_seconds=0)


def test_job_with_injected_native_sidecar_completes_and_its_pod_succeeds(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    utils.create_from_dict(cluster.api, job("once", {"jitmesh.io/audiences": DEMO_AUDIENCE},
                                         [app_container(DEMO_AUDIENCE, stay=False)], "demo-app"), namespace=ns)

    def done() -> object:
        status = cluster.batch.read_namespaced_job_status("once", ns).status
        assert not status.failed, f"the Job failed: {status}"
        return status.succeeded == 1

    cluster.wait("the Job completed", done, 300, ns)
    pods = cluster.pods(ns, "app=once")
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert _sidecar_names(pods[0]) == [SIDECAR]
    assert pods[0].spec.init_containers[0].restart_policy == "Always", "the sidecar is a native sidecar"
    _verified_claims(cluster, ns, pods[0].metadata.name)
    cluster.batch.delete_namespaced_job("once", ns, propagation_policy="Background")
