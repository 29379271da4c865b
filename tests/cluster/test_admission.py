"""Admission on a real cluster: Pod Security `restricted`, the injector down with
failurePolicy Fail, and Services whose link variables look like jitmesh settings."""

from __future__ import annotations

from kubernetes import client

from tests.cluster.conftest import Kube, Release
from tests.cluster.workloads import INJECTOR, RELEASE_NAMESPACE, SIDECAR, app_container, pause_container, pod

DEMO_AUDIENCE = "orders-api"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def test_namespace_enforcing_restricted_pod_security_admits_injected_pods(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    cluster.core.patch_namespace(ns, {"metadata": {"labels": RESTRICTED}})
    try:
        cluster.create(ns, pod("restricted", {}, {"jitmesh.io/audiences": DEMO_AUDIENCE},
                            [app_container(DEMO_AUDIENCE)], "demo-app"))
        p = cluster.wait_verified(ns, "restricted")
        assert [c.name for c in p.spec.init_containers or []] == [SIDECAR]
    finally:
        cluster.core.patch_namespace(ns, {"metadata": {"labels": dict.fromkeys(RESTRICTED)}})
    cluster.core.delete_namespaced_pod("restricted", ns, grace_period_seconds=0)


def _scale_injector(cluster: Kube, replicas: int) -> None:
    cluster.run("kubectl", "scale", "deployment", INJECTOR, "-n", RELEASE_NAMESPACE, f"--replicas={replicas}")
    if replicas == 0:  # down now, not after the pods' grace period
        cluster.run("kubectl", "delete", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=injector",
                    "--grace-period=0", "--force")

    def settled() -> bool:
        pods = cluster.pods(RELEASE_NAMESPACE, "app.kubernetes.io/component=injector")
        ready = [p for p in pods if p.status.container_statuses and all(s.ready for s in p.status.container_statuses)]
        return len(pods) == replicas and len(ready) == replicas

    cluster.wait(f"injector at {replicas} ready replicas", settled, 300, RELEASE_NAMESPACE)


def test_injector_down_refuses_opted_in_pods_naming_jitmesh_and_leaves_other_namespaces_alone(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    plain = cluster.namespace()
    _scale_injector(cluster, 0)
    try:
        refused = None
        try:
            cluster.create(demo_namespace, pod("refused", {}, {"jitmesh.io/audiences": DEMO_AUDIENCE},
                                            [pause_container()], "demo-app"))
        except Exception as exc:  # kubernetes.utils raises FailToCreateError wrapping the ApiException
            refused = str(exc)
        assert refused is not None, "a pod asking for injection was created while the injector was down"
        assert "jitmesh.io" in refused and "jitmesh-injector" in refused, refused
        cluster.create(plain, pod("unaffected", {}, {}, [pause_container()]))
        assert cluster.pod(plain, "unaffected").metadata.name == "unaffected"
    finally:
        _scale_injector(cluster, 2)
    cluster.wait("the unaffected pod Running", lambda: cluster.pod(plain, "unaffected").status.phase == "Running", 180,
              plain)


def test_services_named_like_jitmesh_settings_in_an_app_namespace_break_no_sidecar(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    ns = demo_namespace
    names = ["jitmesh-broker", "jitmesh", "jitmesh-token"]  # JITMESH_BROKER_PORT=tcp://..., JITMESH_PORT, ...
    for name in names:
        cluster.core.create_namespaced_service(ns, client.V1Service(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=8080)], selector={"app": name})))
    try:
        cluster.create(ns, pod("linked", {}, {"jitmesh.io/audiences": DEMO_AUDIENCE},
                            [app_container(DEMO_AUDIENCE)], "demo-app"))
        cluster.wait_verified(ns, "linked")
        env = cluster.exec(ns, "linked", "app", "import os; print(os.environ.get('JITMESH_BROKER_PORT', ''))")
        assert env.strip().startswith("tcp://"), "the service-link variable was not there to break anything"
        side = next(s for s in cluster.pod(ns, "linked").status.init_container_statuses if s.name == SIDECAR)
        assert side.restart_count == 0 and side.ready
    finally:
        for name in names:
            cluster.core.delete_namespaced_service(name, ns)
    cluster.core.delete_namespaced_pod("linked", ns, grace_period_seconds=0)
