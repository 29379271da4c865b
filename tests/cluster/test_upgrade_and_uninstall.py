"""The release's life: `helm upgrade` keeps keys and revocations; `helm uninstall` leaves no
webhook that would block pod creation. (The session's last tests: the release is gone after.)"""

from __future__ import annotations

from tests.cluster.conftest import Kube, Release
from tests.cluster.workloads import BROKER, INJECTOR, RELEASE, RELEASE_NAMESPACE, SIDECAR, pause_container, pod


def _kids(cluster: Kube) -> set[str]:
    return {k["kid"] for k in cluster.broker("GET", "/jwks").json()["keys"]}


def _revocation_ids(cluster: Kube) -> set[str]:
    r = cluster.broker("GET", "/v1/admin/revocations")
    assert r.status_code == 200, r.text
    return {x["id"] for x in r.json()["revocations"]}


def test_helm_upgrade_with_a_changed_value_keeps_keys_and_revocations(cluster: Kube, release: Release) -> None:
    r = cluster.broker("POST", "/v1/admin/revocations", json={"subject": "system:serviceaccount:demo:upgrade-ghost",
                                                           "reason": "cluster test: survives upgrades"})
    assert r.status_code == 201, r.text
    kids, revocations = _kids(cluster), _revocation_ids(cluster)
    before = cluster.apps.read_namespaced_deployment(BROKER, RELEASE_NAMESPACE).metadata.generation
    release.upgrade("--set", "broker.defaultTTL=240")
    assert cluster.apps.read_namespaced_deployment(BROKER, RELEASE_NAMESPACE).metadata.generation > before
    release.wait_ready()
    args = cluster.apps.read_namespaced_deployment(BROKER, RELEASE_NAMESPACE).spec.template.spec.containers[0].args
    assert "--default-ttl=240" in args
    assert kids <= _kids(cluster), "the upgraded broker signs with new keys"
    assert revocations <= cluster.wait("the upgraded broker answers", lambda: _revocation_ids(cluster), 60,
                                    RELEASE_NAMESPACE), "revocations were lost in the upgrade"


def test_helm_uninstall_leaves_no_webhook_that_blocks_pod_creation(
        cluster: Kube, release: Release, demo_namespace: str) -> None:
    cluster.run("helm", "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--timeout", "3m")
    hooks = cluster.run("kubectl", "get", "mutatingwebhookconfigurations", "-o", "name").stdout
    assert INJECTOR not in hooks, hooks
    cluster.create(demo_namespace, pod("after-uninstall", {"jitmesh.io/inject": "true"},
                                       {"jitmesh.io/audiences": "orders-api"}, [pause_container()], "demo-app"))
    p = cluster.wait("a pod created after uninstall Running",
                     lambda: (x := cluster.pod(demo_namespace, "after-uninstall")).status.phase == "Running" and x,
                     180, demo_namespace)
    assert SIDECAR not in [c.name for c in (p.spec.init_containers or []) + p.spec.containers]
    claims = cluster.core.list_namespaced_persistent_volume_claim(RELEASE_NAMESPACE).items
    assert [c.metadata.name for c in claims] == [f"{BROKER}-data"], "the broker's store outlives the release"
