"""The session's single-node cluster (`node.py`) and the chart installed on it as the README
says; helpers to wait for pods with the evidence (events, container logs) in every failure.

These tests run in `make test`. A machine that cannot run containers fails them with what is
missing; only JITMESH_SKIP_CLUSTER=1 skips them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, utils

from tests.cluster.node import REPO, ClusterUnavailable, Node, leftovers, missing_prerequisites, tool_path
from tests.cluster.workloads import BROKER, INJECTOR, RELEASE, RELEASE_NAMESPACE

CHART = REPO / "charts" / "jitmesh"
CLUSTER_TEST_TIMEOUT = 900  # the first test also waits for the node and the chart
TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: runs on the session's real single-node Kubernetes")


# Basic injection first; the release's upgrade and uninstall last (it installs again after).
FILE_ORDER = ["test_injection.py", "test_readme_example.py", "test_admission.py", "test_revocation.py",
              "test_upgrade_and_uninstall.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.fspath)).parents]
    for item in ours:
        item.add_marker(pytest.mark.cluster)
        item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT))
    rank = {name: float(i) for i, name in enumerate(FILE_ORDER)}
    other = rank["test_upgrade_and_uninstall.py"] - 0.5  # a file not listed still runs before the uninstall
    ours.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, other))
    items[:] = [item for item in items if item not in ours] + ours


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines shown as they happen, through pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if reporter is not None:
                reporter.write_line(f"[cluster] {line}")
            else:
                print(f"[cluster] {line}", file=sys.__stderr__, flush=True)

    return say


@pytest.fixture(scope="session")
def cluster_node(request: pytest.FixtureRequest) -> Iterator[Node]:
    if os.environ.get("JITMESH_SKIP_CLUSTER") == "1":
        pytest.skip("JITMESH_SKIP_CLUSTER=1: the single-node cluster tests are skipped")
    missing = missing_prerequisites()
    if missing:
        pytest.fail("this machine cannot run the single-node cluster; missing:\n  - " + "\n  - ".join(missing)
                    + "\n(set JITMESH_SKIP_CLUSTER=1 to skip these tests knowingly)", pytrace=False)
    say = _progress(request.config)
    node = Node(progress=say)
    try:
        node.start()
    except ClusterUnavailable as exc:
        node.stop()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:
        node.stop()
        raise
    TIMINGS["cluster start-up"] = node.elapsed()
    yield node
    t0 = time.monotonic()
    problems = node.stop() + leftovers(node.run_id)
    TIMINGS["cluster teardown"] = time.monotonic() - t0
    assert not problems, f"the node's teardown left things behind: {problems}"


@dataclass
class Kube:
    """The cluster as the tests use it: API clients, kubectl and helm, waits with evidence."""

    node: Node
    api: client.ApiClient
    created_namespaces: list[str] = field(default_factory=list)
    _admin_token: tuple[float, str] | None = None

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def run(self, tool: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`kubectl ...` or `helm ...` with the admin kubeconfig, as a user would type it."""
        env = {**os.environ, "KUBECONFIG": str(self.node.kubeconfig), "HELM_CACHE_HOME": str(self.node.dir / "helm"),
               "HELM_CONFIG_HOME": str(self.node.dir / "helm"), "HELM_DATA_HOME": str(self.node.dir / "helm")}
        out = subprocess.run([str(tool_path(tool)), *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def namespace(self, name: str | None = None, labels: dict[str, str] | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {})))
        self.created_namespaces.append(name)
        return name

    def service_account(self, namespace: str, name: str) -> None:
        try:
            self.core.create_namespaced_service_account(
                namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    def pod(self, namespace: str, name: str) -> client.V1Pod:
        return self.core.read_namespaced_pod(name, namespace)

    def pods(self, namespace: str, selector: str = "") -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def wait(self, what: str, check: Callable[[], Any], timeout: float, namespace: str) -> Any:
        """check() until truthy (exceptions count as not yet); on timeout, fail with the
        namespace's pods, events and container logs, and the jitmesh pods' logs."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
                last = result
            except Exception as exc:
                last = exc
            time.sleep(1)
        raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})\n{self.evidence(namespace)}")

    def logs(self, namespace: str, pod: str, container: str, previous: bool = False) -> str:
        try:
            return str(self.core.read_namespaced_pod_log(pod, namespace, container=container, previous=previous,
                                                         tail_lines=200))
        except client.ApiException as exc:
            return f"(no log: {exc.status} {exc.reason})"

    def app_report(self, namespace: str, pod: str) -> dict[str, Any]:
        """What the app program (workloads.APP) printed: claims, token, readyz status."""
        report: dict[str, Any] = {}
        for line in self.logs(namespace, pod, "app").splitlines():
            word, _, rest = line.partition(" ")
            if word == "VERIFIED":
                report["claims"] = json.loads(rest)
            elif word == "TOKEN":
                report["token"] = rest
            elif word == "READYZ":
                report["readyz"] = int(rest)
        return report

    def wait_verified(self, namespace: str, pod: str, timeout: float = 300) -> client.V1Pod:
        """The pod Running and its app having verified its token (and /readyz answered)."""
        def verified() -> client.V1Pod | None:
            p = self.pod(namespace, pod)
            return p if p.status.phase in ("Running", "Succeeded") and "readyz" in self.app_report(namespace, pod) \
                else None
        return self.wait(f"pod {namespace}/{pod}: app verified its token", verified, timeout, namespace)

    def create(self, namespace: str, doc: dict[str, Any]) -> None:
        utils.create_from_dict(self.api, doc, namespace=namespace)

    def broker_admin_token(self) -> str:
        """A token a broker admin presents, as a user would get one: a ServiceAccount allowed
        `admin` on brokers.jitmesh.io (here through cluster-admin), its token minted for the
        broker's audience (`kubectl create token ... --audience jitmesh`)."""
        if self._admin_token is not None and self._admin_token[0] > time.monotonic():
            return self._admin_token[1]
        name = "jitmesh-test-admin"
        with contextlib.suppress(client.ApiException):
            self.core.create_namespaced_service_account(RELEASE_NAMESPACE, {"metadata": {"name": name}})
        with contextlib.suppress(client.ApiException):
            client.RbacAuthorizationV1Api(self.api).create_cluster_role_binding({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": RELEASE_NAMESPACE}]})
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["jitmesh"], expiration_seconds=3600))
        token = str(self.core.create_namespaced_service_account_token(name, RELEASE_NAMESPACE, request).status.token)
        self._admin_token = (time.monotonic() + 1800, token)
        return token

    def broker(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the broker's Service from inside the cluster's network, as a broker
        admin (a ServiceAccount allowed through SubjectAccessReview)."""
        ip = self.core.read_namespaced_service(BROKER, RELEASE_NAMESPACE).spec.cluster_ip
        headers = {"Authorization": f"Bearer {self.broker_admin_token()}"}
        return self.node.netns.call(lambda: httpx.request(method, f"http://{ip}:8080{path}", headers=headers,
                                                          timeout=15, **kwargs))

    def introspect(self, token: str) -> dict[str, Any]:
        r = self.broker("POST", "/introspect", data={"token": token})
        assert r.status_code == 200, f"introspection: HTTP {r.status_code} {r.text}"
        return dict(r.json())

    def exec(self, namespace: str, pod: str, container: str, code: str) -> str:
        """python3 -c CODE in a running container (kubectl exec, through the kubelet)."""
        return self.run("kubectl", "exec", "-n", namespace, pod, "-c", container, "--", "python3", "-c", code,
                        timeout=60).stdout

    def evidence(self, namespace: str) -> str:
        lines = [f"=== namespace {namespace} ==="]
        for ns in dict.fromkeys([namespace, RELEASE_NAMESPACE]):
            try:
                pods = self.pods(ns)
                events = self.core.list_namespaced_event(ns).items
            except client.ApiException as exc:
                lines.append(f"({ns}: {exc.status} {exc.reason})")
                continue
            for pod in pods:
                lines.append(f"pod {ns}/{pod.metadata.name}: phase {pod.status.phase}")
                statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
                for st in statuses:
                    lines.append(f"  {st.name}: ready={st.ready} started={st.started} restarts={st.restart_count} "
                                 f"state={_state(st.state)}")
                    lines.append("    " + self.logs(ns, pod.metadata.name, st.name)[-2500:].replace("\n", "\n    "))
            for ev in sorted(events, key=lambda e: str(e.last_timestamp or e.event_time or "")):
                lines.append(f"event {ns} {ev.involved_object.kind}/{ev.involved_object.name}: {ev.type} "
                             f"{ev.reason}: {ev.message}")
        return "\n".join(lines)


def _state(state: client.V1ContainerState | None) -> str:
    if state is None:
        return "?"
    if state.running:
        return "running"
    if state.waiting:
        return f"waiting ({state.waiting.reason}: {state.waiting.message})"
    if state.terminated:
        return f"terminated ({state.terminated.reason}, exit {state.terminated.exit_code}: {state.terminated.message})"
    return "?"


@pytest.fixture(scope="session")
def kube_cluster(cluster_node: Node) -> Iterator[Kube]:
    kube = Kube(cluster_node, cluster_node.api_client())
    yield kube
    for ns in kube.created_namespaces:
        try:
            kube.core.delete_namespace(ns)
        except client.ApiException:
            pass


@dataclass
class Release:
    kube: Kube
    certs: Path
    values: list[str]

    def upgrade(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.kube.run("helm", "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                             *self.values, *args, "--wait", "--timeout", "5m")

    def wait_ready(self) -> None:
        for name in (BROKER, INJECTOR):
            self.kube.wait(f"deployment {name} available", lambda n=name: _available(self.kube, n), 300,
                           RELEASE_NAMESPACE)


def _available(kube: Kube, name: str) -> bool:
    d = kube.apps.read_namespaced_deployment(name, RELEASE_NAMESPACE)
    return bool(d.status.ready_replicas == d.spec.replicas and d.status.updated_replicas == d.spec.replicas
                and not d.status.unavailable_replicas)


def jitmesh_cli() -> str:
    return str(Path(sys.executable).parent / "jitmesh")


@pytest.fixture(scope="session")
def release(kube_cluster: Kube, request: pytest.FixtureRequest) -> Release:
    """The chart installed with the README's commands (`jitmesh certs`, then `helm install`)."""
    say = _progress(request.config)
    t0 = time.monotonic()
    certs = kube_cluster.node.dir / "webhook-certs"
    out = subprocess.run([jitmesh_cli(), "certs", "--out", str(certs),
                          "--dns-name", f"{INJECTOR}.{RELEASE_NAMESPACE}.svc",
                          "--dns-name", f"{INJECTOR}.{RELEASE_NAMESPACE}.svc.cluster.local"],
                         capture_output=True, text=True, check=True)
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    assert out.stdout.strip().endswith(ca_bundle) or ca_bundle in out.stdout, out.stdout
    values = ["--set", f"injector.caBundle={ca_bundle}",
              "--set-file", f"injector.tls.crt={certs / 'tls.crt'}",
              "--set-file", f"injector.tls.key={certs / 'tls.key'}"]
    rel = Release(kube_cluster, certs, values)
    kube_cluster.run("helm", "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                     *values, "--timeout", "5m")
    rel.wait_ready()
    TIMINGS["helm install to broker and injector ready"] = time.monotonic() - t0
    say(f"chart installed and ready in {time.monotonic() - t0:.1f}s")
    return rel


@pytest.fixture(scope="session")
def demo_namespace(kube_cluster: Kube, release: Release) -> str:
    """`demo`, labelled for injection: the shipped policy grants its ServiceAccount `demo-app`
    audiences orders-api and payments-api."""
    ns = kube_cluster.namespace("demo", labels={"jitmesh.io/injection": "enabled"})
    kube_cluster.service_account(ns, "demo-app")
    return ns


@pytest.fixture
def cluster(kube_cluster: Kube, request: pytest.FixtureRequest) -> Iterator[Kube]:
    t0 = time.monotonic()
    yield kube_cluster
    TIMINGS[request.node.name] = time.monotonic() - t0


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS and os.environ.get("JITMESH_CLUSTER_TIMINGS"):  # for make bench
        Path(os.environ["JITMESH_CLUSTER_TIMINGS"]).write_text(json.dumps(TIMINGS))
    if TIMINGS:
        terminalreporter.write_sep("-", "cluster timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f}s  {name}")
