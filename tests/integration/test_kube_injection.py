"""The webhook behind a real kube-apiserver: what gets stored when pods are created."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.injector import (
    INJECTOR_BROKER_URL,
    WEBHOOK_NAME,
    InjectorWebhook,
    create_pod,
    namespace_for,
    pod_manifest,
    running_injector_webhook,
)
from tests.fixtures.kube import KubeControlPlane

pytestmark = pytest.mark.kube


def _injected(pod: Any) -> bool:
    return any(c.name == "jitmesh-sidecar" for c in (pod.spec.init_containers or []) + pod.spec.containers)


def test_labelled_pod_is_stored_with_the_native_sidecar_first(kube_api: client.ApiClient,
                                                              webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    pod = create_pod(kube_api, ns, pod_manifest("api", {"jitmesh.io/inject": "true"}, {
        "jitmesh.io/audiences": "orders-db,payments-api", "jitmesh.io/scopes.orders-db": "read write",
        "jitmesh.io/ttl": "300"}))
    sidecar = pod.spec.init_containers[0]
    assert sidecar.name == "jitmesh-sidecar" and sidecar.restart_policy == "Always"
    assert sidecar.startup_probe.var_exec.command[0] == "python3"
    env = {e.name: e.value for e in sidecar.env}
    assert env["JITMESH_BROKER_URL"] == INJECTOR_BROKER_URL
    assert env["JITMESH_AUDIENCES"] == "orders-db,payments-api"
    assert env["JITMESH_SCOPES_ORDERS_DB"] == "read write"
    assert env["JITMESH_TTL"] == "300"
    assert sidecar.security_context.run_as_non_root and not sidecar.security_context.allow_privilege_escalation
    assert pod.metadata.annotations["jitmesh.io/status"] == "injected"


def test_stored_pod_has_the_projected_token_and_memory_volumes(kube_api: client.ApiClient,
                                                               webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    pod = create_pod(kube_api, ns, pod_manifest("api", {"jitmesh.io/inject": "true"},
                                                {"jitmesh.io/audiences": "orders-db"}))
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["jitmesh-tokens"].empty_dir.medium == "Memory"
    projected = volumes["jitmesh-attestation"].projected.sources[0].service_account_token
    assert projected.audience == "jitmesh" and projected.expiration_seconds == 600
    app = pod.spec.containers[0]
    mount = next(m for m in app.volume_mounts if m.name == "jitmesh-tokens")
    assert mount.read_only and mount.mount_path == "/var/run/jitmesh"
    assert {e.name: e.value for e in app.env}["JITMESH_AGENT_URL"] == "http://127.0.0.1:8099"


def test_unlabelled_pod_is_stored_unchanged(kube_api: client.ApiClient, webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    pod = create_pod(kube_api, ns, pod_manifest("plain", annotations={"jitmesh.io/audiences": "orders-db"}))
    assert not _injected(pod)
    assert "jitmesh.io/status" not in (pod.metadata.annotations or {})


def test_pod_in_labelled_namespace_is_injected(kube_api: client.ApiClient,
                                               webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace(**{"jitmesh.io/injection": "enabled"})
    pod = create_pod(kube_api, ns, pod_manifest("worker", annotations={"jitmesh.io/audiences": "queue"}))
    assert _injected(pod)


def test_opted_out_pod_in_labelled_namespace_is_not_injected(kube_api: client.ApiClient,
                                                             webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace(**{"jitmesh.io/injection": "enabled"})
    pod = create_pod(kube_api, ns, pod_manifest("legacy", {"jitmesh.io/inject": "false"},
                                                {"jitmesh.io/audiences": "queue"}))
    assert not _injected(pod)


def test_bad_annotation_is_refused_with_the_injectors_message(kube_api: client.ApiClient,
                                                              webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    with pytest.raises(ApiException) as err:
        create_pod(kube_api, ns, pod_manifest("bad", {"jitmesh.io/inject": "true"},
                                   {"jitmesh.io/audiences": "orders-db", "jitmesh.io/ttl": "5m"}))
    assert err.value.status == 400
    message = json.loads(err.value.body)["message"]
    assert message.startswith(f'admission webhook "{WEBHOOK_NAME}" denied the request: ')
    assert "annotation jitmesh.io/ttl: '5m' is not a whole number of seconds" in message
    assert client.CoreV1Api(kube_api).list_namespaced_pod(ns).items == []


def test_conflicting_volume_is_refused_not_half_patched(kube_api: client.ApiClient,
                                                        webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    pod = pod_manifest("clash", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"})
    pod.spec.volumes = [client.V1Volume(name="jitmesh-tokens", empty_dir=client.V1EmptyDirVolumeSource())]
    with pytest.raises(ApiException) as err:
        create_pod(kube_api, ns, pod)
    assert err.value.status == 409
    assert "the pod already has a volume named 'jitmesh-tokens'" in json.loads(err.value.body)["message"]


def test_server_dry_run_shows_the_sidecar_and_stores_nothing(kube_api: client.ApiClient,
                                                             webhook_namespace: Callable[..., str]) -> None:
    ns = webhook_namespace()
    core = client.CoreV1Api(kube_api)
    got = core.create_namespaced_pod(ns, pod_manifest("dry", {"jitmesh.io/inject": "true"},
                                              {"jitmesh.io/audiences": "orders-db"}), dry_run="All")
    assert _injected(got)
    assert core.list_namespaced_pod(ns).items == []


def test_injector_logs_and_counts_each_admission(injector_webhook: InjectorWebhook, kube_api: client.ApiClient,
                                                   webhook_namespace: Callable[..., str]) -> None:
    def injected_count() -> float:
        text = httpx.get(injector_webhook.url + "/metrics", verify=injector_webhook.tls()).text
        prefix = 'jitmesh_injector_admissions_total{outcome="injected"}'
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        return float(line.split()[-1])

    ns = webhook_namespace()
    before = injected_count()
    create_pod(kube_api, ns, pod_manifest("counted", {"jitmesh.io/inject": "true"},
                                          {"jitmesh.io/audiences": "orders-db"}))
    assert injected_count() == before + 1
    assert f'"namespace":"{ns}"' in injector_webhook.process.output()


def test_injected_pod_passes_the_restricted_pod_security_standard(kube_api: client.ApiClient,
                                                                  webhook_namespace: Callable[..., str]) -> None:
    """PodSecurity admission validates after the mutating webhooks: it sees the sidecar too."""
    ns = webhook_namespace(**{"pod-security.kubernetes.io/enforce": "restricted"})
    pod = pod_manifest("locked-down", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"})
    assert _injected(create_pod(kube_api, ns, pod))
    # and the standard is really enforced there: a pod keeping its capabilities is refused
    bad = pod_manifest("loose")
    bad.spec.containers[0].security_context.capabilities = None
    with pytest.raises(ApiException) as err:
        create_pod(kube_api, ns, bad)
    assert "violates PodSecurity" in json.loads(err.value.body)["message"]


@pytest.fixture(scope="module")
def legacy_webhook(kube: KubeControlPlane, kube_api: client.ApiClient,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[InjectorWebhook]:
    with running_injector_webhook(kube, kube_api, tmp_path_factory.mktemp("legacy"), "--no-native-sidecars") as hook:
        yield hook


def test_without_native_sidecars_the_sidecar_is_the_first_container(
        kube_api: client.ApiClient, legacy_webhook: InjectorWebhook, make_namespace: Callable[..., str]) -> None:
    ns = namespace_for(legacy_webhook, make_namespace, kube_api)
    pod = create_pod(kube_api, ns, pod_manifest("api", {"jitmesh.io/inject": "true"},
                                                {"jitmesh.io/audiences": "orders-db"}))
    assert not pod.spec.init_containers
    first, app = pod.spec.containers
    assert first.name == "jitmesh-sidecar" and first.restart_policy is None
    assert first.lifecycle.post_start.var_exec.command[0] == "python3"
    assert pod.metadata.annotations["kubectl.kubernetes.io/default-container"] == app.name == "app"


@pytest.fixture(scope="module")
def blind_webhook(kube: KubeControlPlane, kube_api: client.ApiClient,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[InjectorWebhook]:
    """An injector whose identity may not read namespaces (RBAC missing)."""
    with running_injector_webhook(kube, kube_api, tmp_path_factory.mktemp("blind"), user="nobody") as hook:
        yield hook


def test_unreadable_namespace_refuses_undecided_pods_but_not_labelled_ones(
        kube_api: client.ApiClient, blind_webhook: InjectorWebhook, make_namespace: Callable[..., str]) -> None:
    ns = namespace_for(blind_webhook, make_namespace, kube_api)
    with pytest.raises(ApiException) as err:
        create_pod(kube_api, ns, pod_manifest("undecided", annotations={"jitmesh.io/audiences": "orders-db"}))
    message = json.loads(err.value.body)["message"]
    assert f"the labels of namespace '{ns}' are needed and could not be read" in message
    assert "HTTP 403" in message
    opted_out = create_pod(kube_api, ns, pod_manifest("opted-out", {"jitmesh.io/inject": "false"}))
    assert not _injected(opted_out)
