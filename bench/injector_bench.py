"""`POST /mutate` latency of a real `jitmesh injector` process over HTTPS, on a realistic pod.

The pod is what a Deployment's ReplicaSet sends after the built-in admission plugins ran
(ServiceAccount volume, owner reference, probes, resources, an init container and two app
containers), opted in by its own label, so no namespace read is involved. One keep-alive TLS
connection, requests one after another, interleaved with a no-op server on the same stack (the
`floor`), so the figures separate the webhook's cost from this shared machine's noise.

    from bench.injector_bench import run
    run(workdir=Path("/tmp/x"), duration=5.0)  # {"p50_ms": ..., "p99_ms": ..., ...}
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.procstat import group_cpu_seconds
from injector.certs import WebhookCerts, write_webhook_certs
from jitmesh.procs import ManagedProcess, free_port, wait_http

WARMUP_REQUESTS = 200
MAX_REQUESTS = 20000


def realistic_pod(namespace: str = "payments") -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(12)]
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10}
    resources = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    sa_mount = {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "orders-api-7d9c5b6f4-", "namespace": namespace,
            "labels": {"app": "orders-api", "pod-template-hash": "7d9c5b6f4", "team": "payments",
                       "jitmesh.io/inject": "true"},
            "annotations": {"jitmesh.io/audiences": "orders-db,payments-api,audit-log",
                            "jitmesh.io/scopes.orders-db": "read write",
                            "jitmesh.io/scopes.payments-api": "charge refund", "jitmesh.io/ttl": "300",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "orders-api-7d9c5b6f4",
                                 "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "serviceAccountName": "orders-api",
            "initContainers": [{"name": "migrate", "image": "registry.example/orders-migrate:4.2.0",
                                "args": ["migrate", "--to", "latest"], "env": env[:4], "volumeMounts": [sa_mount],
                                "resources": resources}],
            "containers": [
                {"name": "api", "image": "registry.example/orders-api@sha256:" + "a" * 64,
                 "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
                 "env": env, "resources": resources, "readinessProbe": probe, "livenessProbe": probe,
                 "volumeMounts": [{"name": "config", "mountPath": "/etc/orders", "readOnly": True}, sa_mount]},
                {"name": "log-shipper", "image": "registry.example/shipper:1.9",
                 "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"}, sa_mount],
                 "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}}},
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "orders-api"}},
                {"name": "logs", "emptyDir": {}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                                                "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "securityContext": {"runAsNonRoot": True, "fsGroup": 2000},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}],
        },
    }


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": str(uuid.uuid4()),
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                "system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }}


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


# The floor: the same stack (uvicorn, TLS, Starlette) answering a same-sized body without any work.
FLOOR_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
size = int(sys.argv[4])
async def mutate(request):
    await request.body()
    return Response(b"x" * size, media_type="application/json")
async def ready(request):
    return Response(b"ok")
app = Starlette(routes=[Route("/mutate", mutate, methods=["POST"]), Route("/readyz", ready)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_certfile=sys.argv[2], ssl_keyfile=sys.argv[3],
            log_level="warning")
"""


class Endpoint:
    """One keep-alive HTTPS connection. http.client rather than httpx: its own overhead is a
    fraction of a millisecond, closer to kube-apiserver's Go client."""

    def __init__(self, port: int, tls: ssl.SSLContext) -> None:
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)
        self.samples: list[float] = []

    def post(self, body: bytes) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        self.conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        raw = r.read()
        self.samples.append((time.perf_counter() - t0) * 1000)
        return r.status, raw

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples)
        return {"p50_ms": round(_percentile(s, 0.50), 3), "p90_ms": round(_percentile(s, 0.90), 3),
                "p99_ms": round(_percentile(s, 0.99), 3), "max_ms": round(s[-1], 3),
                "mean_ms": round(statistics.fmean(s), 3)}


def start_injector(workdir: Path) -> tuple[ManagedProcess, int, WebhookCerts]:
    """A real `jitmesh injector` on a free loopback port with a serving certificate of its own CA."""
    certs = write_webhook_certs(workdir / "certs", [], ["127.0.0.1"], replace_ca=True)
    # Never used for a pod that opts in by its own label; the injector only needs API access configured.
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    port = free_port()
    injector = ManagedProcess("injector", [
        sys.executable, "-m", "jitmesh.cli", "--log-level", "warning", "injector", "--listen", f"127.0.0.1:{port}",
        "--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file),
        "--broker-url", "http://jitmesh-broker.jitmesh.svc:8080", "--kubeconfig", str(kubeconfig),
    ], workdir / "injector.log", env=env).start()
    return injector, port, certs


def run(workdir: Path, duration: float = 5.0, say: Callable[[str], None] = print) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    injector, port, certs = start_injector(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    pod = realistic_pod()
    bodies = [json.dumps(admission_review(pod)).encode() for _ in range(64)]
    floor_port = free_port()
    floor = ManagedProcess("floor", [sys.executable, "-c", FLOOR_APP, str(floor_port), str(certs.cert_file),
                                     str(certs.key_file), "5200"], workdir / "floor.log", env=env).start()
    try:
        tls = ssl.create_default_context(cafile=str(certs.ca_file))
        for p, proc in ((port, injector), (floor_port, floor)):
            wait_http(f"https://127.0.0.1:{p}/readyz", timeout=30, proc=proc.proc, verify=tls)
        webhook, baseline = Endpoint(port, tls), Endpoint(floor_port, tls)
        for i in range(WARMUP_REQUESTS):
            webhook.post(bodies[i % len(bodies)])
            baseline.post(bodies[i % len(bodies)])
        webhook.samples.clear()
        baseline.samples.clear()
        say(f"webhook: measuring POST /mutate for {duration:g}s on a {len(bodies[0])}-byte AdmissionReview, "
            "interleaved with a no-op server on the same stack")
        patch_bytes = 0
        load_before = os.getloadavg()[0]
        cpu_before = group_cpu_seconds(injector.pid)
        end = time.perf_counter() + duration
        # Interleaved, so both see the same load on this shared machine.
        while time.perf_counter() < end and len(webhook.samples) < MAX_REQUESTS:
            body = bodies[len(webhook.samples) % len(bodies)]
            status, raw = webhook.post(body)
            resp = json.loads(raw)["response"]
            if status != 200 or resp.get("patchType") != "JSONPatch":
                raise RuntimeError(f"/mutate did not inject the benchmark pod: {status} {raw[:300]!r}")
            patch_bytes = len(resp["patch"])
            baseline.post(body)
        server_cpu_ms = (group_cpu_seconds(injector.pid) - cpu_before) * 1000 / max(1, len(webhook.samples))
    finally:
        injector.stop()
        floor.stop()
    return {
        "requests": len(webhook.samples),
        **webhook.summary(),
        # CPU the injector process spent per admission (TLS, HTTP, parse, patch, log)
        "server_cpu_per_request_ms": round(server_cpu_ms, 3),
        # the same stack doing nothing, measured at the same time: what the machine allows
        "floor": baseline.summary(),
        "review_kb": round(len(bodies[0]) / 1000, 1),
        "patch_base64_kb": round(patch_bytes / 1000, 1),
        # this machine is shared: the 1-minute load average puts the tail in context
        "load_average": round(max(load_before, os.getloadavg()[0]), 2),
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d)), indent=2))
