"""`POST /mutate` latency of a real `jitmesh injector` process over HTTPS, on a realistic pod.

The pod is what a Deployment's ReplicaSet sends after the built-in admission plugins ran
(ServiceAccount volume, owner reference, probes, resources, an init container and two app
containers), opted in by its own label, so no namespace read is involved. One keep-alive TLS
connection, requests one after another.

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
from injector.certs import write_webhook_certs
from jitmesh.procs import ManagedProcess, free_port, wait_http

WARMUP_REQUESTS = 200
MAX_REQUESTS = 20000


def realistic_pod(namespace: str = "payments") -> dict[str, Any]:
    env = [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(12)]
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


def run(workdir: Path, duration: float = 5.0, say: Callable[[str], None] = print) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    certs = write_webhook_certs(workdir / "certs", [], ["127.0.0.1"])
    # Never used for a pod that opts in by its own label; the injector only needs API access configured.
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "none", "user": {"token": "unused"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    proc = ManagedProcess("injector", [
        sys.executable, "-m", "jitmesh.cli", "--log-level", "warning", "injector", "--listen", f"127.0.0.1:{port}",
        "--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file),
        "--broker-url", "http://jitmesh-broker.jitmesh.svc:8080", "--kubeconfig", str(kubeconfig),
    ], workdir / "injector.log", env=env).start()
    url = f"https://127.0.0.1:{port}"
    try:
        tls = ssl.create_default_context(cafile=str(certs.ca_file))
        wait_http(url + "/readyz", timeout=30, proc=proc.proc, verify=tls)  # type: ignore[arg-type]
        pod = realistic_pod()
        bodies = [json.dumps(admission_review(pod)).encode() for _ in range(64)]
        headers = {"Content-Type": "application/json"}
        # http.client rather than httpx: its own overhead is a fraction of a millisecond, closer
        # to kube-apiserver's Go client, so the figure is the webhook's and not the client's.
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)

        def post(body: bytes) -> tuple[int, bytes]:
            conn.request("POST", "/mutate", body, headers)
            r = conn.getresponse()
            return r.status, r.read()

        for i in range(WARMUP_REQUESTS):
            post(bodies[i % len(bodies)])
        say(f"webhook: measuring POST /mutate for {duration:g}s on a {len(bodies[0])}-byte AdmissionReview")
        samples: list[float] = []
        patch_bytes = 0
        load_before = os.getloadavg()[0]
        cpu_before = group_cpu_seconds(proc.pid)
        end = time.perf_counter() + duration
        while time.perf_counter() < end and len(samples) < MAX_REQUESTS:
            body = bodies[len(samples) % len(bodies)]
            t0 = time.perf_counter()
            status, raw = post(body)
            samples.append((time.perf_counter() - t0) * 1000)
            resp = json.loads(raw)["response"]
            if status != 200 or resp.get("patchType") != "JSONPatch":
                raise RuntimeError(f"/mutate did not inject the benchmark pod: {status} {raw[:300]!r}")
            patch_bytes = len(resp["patch"])
        conn.close()
        server_cpu_ms = (group_cpu_seconds(proc.pid) - cpu_before) * 1000 / max(1, len(samples))
    finally:
        proc.stop()
    samples.sort()
    return {
        "requests": len(samples),
        "p50_ms": round(_percentile(samples, 0.50), 3),
        "p90_ms": round(_percentile(samples, 0.90), 3),
        "p99_ms": round(_percentile(samples, 0.99), 3),
        "max_ms": round(samples[-1], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        # CPU the injector process spent per admission (TLS, HTTP, parse, patch, log)
        "server_cpu_per_request_ms": round(server_cpu_ms, 3),
        "review_kb": round(len(bodies[0]) / 1000, 1),
        "patch_base64_kb": round(patch_bytes / 1000, 1),
        # this machine is shared: the 1-minute load average puts the tail in context
        "load_average": round(max(load_before, os.getloadavg()[0]), 2),
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(Path(d)), indent=2))
