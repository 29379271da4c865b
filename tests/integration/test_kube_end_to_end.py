"""From `kubectl create pod` to a token file, with everything real but the kubelet: the injector
mutates the pod in the API server; the test then does what the kubelet would (a TokenRequest for
the projected volume, the sidecar started with the env the webhook wrote); the sidecar trades
that token at a TokenReview broker and writes the audiences' tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from kubernetes import client

from jitmesh.procs import ManagedProcess, free_port, wait_http
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.injector import create_pod, pod_manifest
from tests.fixtures.kube import KubeControlPlane, grant_cluster_role
from tests.integration.test_kube_attestation import BROKER_RULES, BROKER_USER, POLICY

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def broker(kube: KubeControlPlane, kube_api: client.ApiClient, module_make_opa: Callable[..., Any],
           module_broker_factory: Callable[..., BrokerHandle], tmp_path_factory: pytest.TempPathFactory
           ) -> BrokerHandle:
    grant_cluster_role(kube_api, BROKER_USER, BROKER_RULES)
    policy = tmp_path_factory.mktemp("e2e-policy")
    (policy / "decision.rego").write_text(POLICY)
    return module_broker_factory(module_make_opa(policy).url, attestation="tokenreview",
                                 kubeconfig=kube.kubeconfig(BROKER_USER))


def _kubelet_token(api: client.ApiClient, pod: Any) -> str:
    """What the kubelet writes into the `jitmesh-attestation` projected volume."""
    source = next(v for v in pod.spec.volumes if v.name == "jitmesh-attestation").projected.sources[0]
    sat = source.service_account_token
    got = client.CoreV1Api(api).create_namespaced_service_account_token(
        pod.spec.service_account_name or "default", pod.metadata.namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[sat.audience], expiration_seconds=sat.expiration_seconds,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.metadata.name,
                                                           uid=pod.metadata.uid))))
    return str(got.status.token)


def test_injected_pod_gets_tokens_from_the_broker(kube_api: client.ApiClient, webhook_namespace: Callable[..., str],
                                                  broker: BrokerHandle, tmp_path: Path) -> None:
    ns = webhook_namespace()
    pod = create_pod(kube_api, ns, pod_manifest("api", {"jitmesh.io/inject": "true"}, {
        "jitmesh.io/audiences": "orders-db,payments-api", "jitmesh.io/scopes.orders-db": "read"}))
    sidecar = pod.spec.init_containers[0]
    env = {e.name: e.value for e in sidecar.env}

    # The pod's paths and the in-cluster broker name, mapped onto this machine.
    sa_token = tmp_path / "attestation" / "token"
    sa_token.parent.mkdir()
    sa_token.write_text(_kubelet_token(kube_api, pod))
    token_dir = tmp_path / "tokens"
    port = free_port()
    env.update({"JITMESH_SA_TOKEN_FILE": str(sa_token), "JITMESH_TOKEN_DIR": str(token_dir),
                "JITMESH_BROKER_URL": broker.url, "JITMESH_LISTEN": f"127.0.0.1:{port}"})
    base = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    proc = ManagedProcess("sidecar", [sys.executable, "-m", "jitmesh.cli", *sidecar.command[1:]],
                          tmp_path / "sidecar.log", env={**base, **env}).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=proc.proc)
        for audience in ("orders-db", "payments-api"):
            claims = jwt.decode((token_dir / audience).read_text(), options={"verify_signature": False})
            assert claims["aud"] == audience
            assert claims["kubernetes.io"]["pod"] == {"name": "api", "uid": pod.metadata.uid}
        assert jwt.decode((token_dir / "orders-db").read_text(),
                          options={"verify_signature": False})["scope"] == "read"

        # The startup probe the webhook wrote passes, run against this agent's port.
        probe = [a.replace("127.0.0.1:8099", f"127.0.0.1:{port}") for a in sidecar.startup_probe.var_exec.command]
        assert probe[0] == "python3"
        assert subprocess.run([sys.executable, *probe[1:]], timeout=10).returncode == 0
        r = httpx.get(f"http://127.0.0.1:{port}/v1/token/orders-db")
        assert r.status_code == 200 and json.loads(r.text)["access_token"]
    finally:
        assert proc.stop(timeout=10) == 0, proc.output()[-2000:]
    deadline = time.monotonic() + 5
    while list(token_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(token_dir.iterdir()) == [], "the sidecar left token files behind on SIGTERM"
