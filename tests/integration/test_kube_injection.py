"""The webhook behind a real kube-apiserver: what gets stored when pods are created."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from injector.certs import write_webhook_certs
from jitmesh.procs import ManagedProcess, free_port, wait_http
from tests.fixtures.kube import KubeControlPlane

pytestmark = pytest.mark.kube

WEBHOOK_NAME = "pods.jitmesh.io"
BROKER_URL = "http://jitmesh-broker.jitmesh.svc:8080"


@dataclass
class Webhook:
    url: str
    process: ManagedProcess
    marker: dict[str, str]  # the label that puts a namespace in this webhook's scope
    config_name: str
    ca_file: Path


def _grant_namespace_reads(api: client.ApiClient, user: str) -> None:
    """What the chart grants the injector: get namespaces, nothing else."""
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"jitmesh-injector-test-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name=name),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["namespaces"], verbs=["get"])]))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
        subjects=[client.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")]))


@pytest.fixture(scope="module")
def webhook(kube: KubeControlPlane, kube_api: client.ApiClient,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """`jitmesh injector` on 127.0.0.1, registered with the API server for namespaces carrying
    `marker`, as the `jitmesh-injector` user with only the chart's RBAC."""
    home = tmp_path_factory.mktemp("injector")
    certs = write_webhook_certs(home / "certs", [], ["127.0.0.1"])
    _grant_namespace_reads(kube_api, "jitmesh-injector")
    port = free_port()
    proc = ManagedProcess("injector", [
        sys.executable, "-m", "jitmesh.cli", "injector", "--listen", f"127.0.0.1:{port}",
        "--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file),
        "--broker-url", BROKER_URL, "--sidecar-image", "ghcr.io/jitmesh/jitmesh:test",
        "--kubeconfig", str(kube.kubeconfig("jitmesh-injector")), "--namespace-cache-seconds", "0",
    ], home / "injector.log", env={k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}).start()
    url = f"https://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", timeout=30, proc=proc.proc,
                  verify=ssl.create_default_context(cafile=str(certs.ca_file)))  # type: ignore[arg-type]
    except Exception:
        proc.stop()
        raise
    marker = {"jitmesh-test/webhook": uuid.uuid4().hex[:8]}
    config_name = f"jitmesh-test-{marker['jitmesh-test/webhook']}"
    admission = client.AdmissionregistrationV1Api(kube_api)
    admission.create_mutating_webhook_configuration(client.V1MutatingWebhookConfiguration(
        metadata=client.V1ObjectMeta(name=config_name),
        webhooks=[client.V1MutatingWebhook(
            name=WEBHOOK_NAME,
            admission_review_versions=["v1"],
            side_effects="None",
            failure_policy="Fail",
            reinvocation_policy="IfNeeded",
            timeout_seconds=10,
            client_config=client.AdmissionregistrationV1WebhookClientConfig(
                url=url + "/mutate", ca_bundle=certs.ca_bundle),
            namespace_selector=client.V1LabelSelector(match_labels=marker),
            rules=[client.V1RuleWithOperations(api_groups=[""], api_versions=["v1"], operations=["CREATE"],
                                               resources=["pods"], scope="Namespaced")],
        )]))
    hook = Webhook(url, proc, marker, config_name, certs.ca_file)
    try:
        yield hook
    finally:
        admission.delete_mutating_webhook_configuration(config_name)
        proc.stop()


@pytest.fixture
def namespace(webhook: Webhook, make_namespace: Callable[..., str], kube_api: client.ApiClient) -> Callable[..., str]:
    """`namespace(**labels)`: a namespace the webhook is called for, once the API server uses it."""

    def make(**labels: str) -> str:
        name = make_namespace({**webhook.marker, **labels})
        _wait_until_webhook_is_active(kube_api, name)
        return name

    return make


def _pod(name: str, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="registry.example/app:1")]))


def _wait_until_webhook_is_active(api: client.ApiClient, ns: str, timeout: float = 20.0) -> None:
    """The API server picks up a new webhook configuration asynchronously: probe with dry runs."""
    core = client.CoreV1Api(api)
    probe = _pod("probe", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "probe"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = core.create_namespaced_pod(ns, probe, dry_run="All")
        if got.spec.init_containers:
            return
        time.sleep(0.2)
    raise AssertionError(f"the webhook was not called for namespace {ns} within {timeout}s")


def _create(api: client.ApiClient, ns: str, pod: client.V1Pod) -> Any:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, pod)
    return core.read_namespaced_pod(pod.metadata.name, ns)


def _injected(pod: Any) -> bool:
    return any(c.name == "jitmesh-sidecar" for c in (pod.spec.init_containers or []) + pod.spec.containers)


def test_labelled_pod_is_stored_with_the_native_sidecar_first(kube_api: client.ApiClient,
                                                              namespace: Callable[..., str]) -> None:
    ns = namespace()
    pod = _create(kube_api, ns, _pod("api", {"jitmesh.io/inject": "true"}, {
        "jitmesh.io/audiences": "orders-db,payments-api", "jitmesh.io/scopes.orders-db": "read write",
        "jitmesh.io/ttl": "300"}))
    sidecar = pod.spec.init_containers[0]
    assert sidecar.name == "jitmesh-sidecar" and sidecar.restart_policy == "Always"
    assert sidecar.startup_probe.var_exec.command[0] == "python3"
    env = {e.name: e.value for e in sidecar.env}
    assert env["JITMESH_BROKER_URL"] == BROKER_URL
    assert env["JITMESH_AUDIENCES"] == "orders-db,payments-api"
    assert env["JITMESH_SCOPES_ORDERS_DB"] == "read write"
    assert env["JITMESH_TTL"] == "300"
    assert sidecar.security_context.run_as_non_root and not sidecar.security_context.allow_privilege_escalation
    assert pod.metadata.annotations["jitmesh.io/status"] == "injected"


def test_stored_pod_has_the_projected_token_and_memory_volumes(kube_api: client.ApiClient,
                                                               namespace: Callable[..., str]) -> None:
    ns = namespace()
    pod = _create(kube_api, ns, _pod("api", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"}))
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["jitmesh-tokens"].empty_dir.medium == "Memory"
    projected = volumes["jitmesh-attestation"].projected.sources[0].service_account_token
    assert projected.audience == "jitmesh" and projected.expiration_seconds == 600
    app = pod.spec.containers[0]
    mount = next(m for m in app.volume_mounts if m.name == "jitmesh-tokens")
    assert mount.read_only and mount.mount_path == "/var/run/jitmesh"
    assert {e.name: e.value for e in app.env}["JITMESH_AGENT_URL"] == "http://127.0.0.1:8099"


def test_unlabelled_pod_is_stored_unchanged(kube_api: client.ApiClient, namespace: Callable[..., str]) -> None:
    ns = namespace()
    pod = _create(kube_api, ns, _pod("plain", annotations={"jitmesh.io/audiences": "orders-db"}))
    assert not _injected(pod)
    assert "jitmesh.io/status" not in (pod.metadata.annotations or {})


def test_pod_in_labelled_namespace_is_injected(kube_api: client.ApiClient, namespace: Callable[..., str]) -> None:
    ns = namespace(**{"jitmesh.io/injection": "enabled"})
    pod = _create(kube_api, ns, _pod("worker", annotations={"jitmesh.io/audiences": "queue"}))
    assert _injected(pod)


def test_opted_out_pod_in_labelled_namespace_is_not_injected(kube_api: client.ApiClient,
                                                             namespace: Callable[..., str]) -> None:
    ns = namespace(**{"jitmesh.io/injection": "enabled"})
    pod = _create(kube_api, ns, _pod("legacy", {"jitmesh.io/inject": "false"}, {"jitmesh.io/audiences": "queue"}))
    assert not _injected(pod)


def test_bad_annotation_is_refused_with_the_injectors_message(kube_api: client.ApiClient,
                                                              namespace: Callable[..., str]) -> None:
    ns = namespace()
    with pytest.raises(ApiException) as err:
        _create(kube_api, ns, _pod("bad", {"jitmesh.io/inject": "true"},
                                   {"jitmesh.io/audiences": "orders-db", "jitmesh.io/ttl": "5m"}))
    assert err.value.status == 400
    message = json.loads(err.value.body)["message"]
    assert message.startswith(f'admission webhook "{WEBHOOK_NAME}" denied the request: ')
    assert "annotation jitmesh.io/ttl: '5m' is not a whole number of seconds" in message
    assert client.CoreV1Api(kube_api).list_namespaced_pod(ns).items == []


def test_conflicting_volume_is_refused_not_half_patched(kube_api: client.ApiClient,
                                                        namespace: Callable[..., str]) -> None:
    ns = namespace()
    pod = _pod("clash", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"})
    pod.spec.volumes = [client.V1Volume(name="jitmesh-tokens", empty_dir=client.V1EmptyDirVolumeSource())]
    with pytest.raises(ApiException) as err:
        _create(kube_api, ns, pod)
    assert err.value.status == 409
    assert "the pod already has a volume named 'jitmesh-tokens'" in json.loads(err.value.body)["message"]


def test_server_dry_run_shows_the_sidecar_and_stores_nothing(kube_api: client.ApiClient,
                                                             namespace: Callable[..., str]) -> None:
    ns = namespace()
    core = client.CoreV1Api(kube_api)
    got = core.create_namespaced_pod(ns, _pod("dry", {"jitmesh.io/inject": "true"},
                                              {"jitmesh.io/audiences": "orders-db"}), dry_run="All")
    assert _injected(got)
    assert core.list_namespaced_pod(ns).items == []


def test_injector_logs_and_counts_each_admission(webhook: Webhook, kube_api: client.ApiClient,
                                                   namespace: Callable[..., str]) -> None:
    def injected_count() -> float:
        text = httpx.get(webhook.url + "/metrics", verify=ssl.create_default_context(cafile=str(webhook.ca_file))).text
        prefix = 'jitmesh_injector_admissions_total{outcome="injected"}'
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        return float(line.split()[-1])

    ns = namespace()
    before = injected_count()
    _create(kube_api, ns, _pod("counted", {"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"}))
    assert injected_count() == before + 1
    assert f'"namespace":"{ns}"' in webhook.process.output()
