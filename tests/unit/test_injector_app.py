"""The webhook's HTTP edge with a fake namespace reader: what the API server sends and gets back."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest
from starlette.testclient import TestClient

from injector.app import create_app
from injector.config import InjectorConfig
from injector.namespaces import NamespaceUnavailable

CONFIG = InjectorConfig(broker_url="http://broker:8080", sidecar_image="jitmesh:test")


class FakeNamespaces:
    def __init__(self, labels: Mapping[str, Mapping[str, str]] | None = None, fail: bool = False) -> None:
        self._labels = labels or {}
        self._fail = fail
        self.reads: list[str] = []

    def labels(self, namespace: str) -> Mapping[str, str]:
        self.reads.append(namespace)
        if self._fail:
            raise NamespaceUnavailable(f"reading namespace {namespace!r} failed: HTTP 403 Forbidden")
        return self._labels.get(namespace, {})


def _pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _review(obj: Any, uid: str = "7f0c5f2e-uid", namespace: str = "payments", kind: str = "Pod") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "namespace": namespace, "object": obj, "dryRun": False}}


def _client(namespaces: FakeNamespaces | None = None) -> TestClient:
    return TestClient(create_app(CONFIG, namespaces or FakeNamespaces()))


def test_injected_pod_answer_echoes_uid_and_carries_a_base64_json_patch() -> None:
    pod = _pod({"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"})
    r = _client().post("/mutate", json=_review(pod, uid="abc-123"))
    assert r.status_code == 200
    body = r.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    resp = body["response"]
    assert resp["uid"] == "abc-123" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    assert {"op": "add", "path": "/metadata/annotations/jitmesh.io~1status", "value": "injected"} in ops


def test_unlabelled_pod_in_enabled_namespace_is_injected_after_reading_the_namespace() -> None:
    ns = FakeNamespaces({"batch": {"jitmesh.io/injection": "enabled"}})
    r = _client(ns).post("/mutate", json=_review(_pod(annotations={"jitmesh.io/audiences": "q"}), namespace="batch"))
    assert r.json()["response"]["patchType"] == "JSONPatch"
    assert ns.reads == ["batch"]


def test_pod_label_decides_without_reading_the_namespace() -> None:
    ns = FakeNamespaces(fail=True)
    r = _client(ns).post("/mutate", json=_review(_pod({"jitmesh.io/inject": "false"})))
    assert r.json()["response"] == {"uid": "7f0c5f2e-uid", "allowed": True}
    assert ns.reads == []


def test_unreadable_namespace_refuses_an_undecided_pod() -> None:
    r = _client(FakeNamespaces(fail=True)).post("/mutate", json=_review(_pod()))
    resp = r.json()["response"]
    assert r.status_code == 200 and resp["allowed"] is False
    assert resp["status"]["code"] == 503
    assert "labels of namespace 'payments'" in resp["status"]["message"]
    assert "HTTP 403" in resp["status"]["message"]


def test_bad_annotation_refusal_names_the_annotation() -> None:
    pod = _pod({"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db", "jitmesh.io/ttl": "soon"})
    resp = _client().post("/mutate", json=_review(pod)).json()["response"]
    assert resp["allowed"] is False and resp["status"]["code"] == 400
    assert "jitmesh.io/ttl" in resp["status"]["message"]


def test_non_pod_is_allowed_unchanged() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"jitmesh.io/inject": "true"}}}
    resp = _client().post("/mutate", json=_review(cm, kind="ConfigMap")).json()["response"]
    assert resp == {"uid": "7f0c5f2e-uid", "allowed": True}


def test_host_network_pod_is_allowed_with_a_warning() -> None:
    pod = _pod({"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "orders-db"})
    pod["spec"]["hostNetwork"] = True
    resp = _client().post("/mutate", json=_review(pod)).json()["response"]
    assert resp["allowed"] is True and "patch" not in resp
    assert "host network" in resp["warnings"][0]


@pytest.mark.parametrize(("body", "problem"), [
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
     "admissionReviewVersions"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).encode(), "uid"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "u", "kind": "Pod"}}).encode(), "request.kind"),
])
def test_malformed_review_is_a_400_naming_the_problem(body: bytes, problem: str) -> None:
    r = _client().post("/mutate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    assert problem in r.json()["error_description"]


def test_oversized_body_is_a_400() -> None:
    r = _client().post("/mutate", content=b"x" * (5 * 1024 * 1024))
    assert r.status_code == 400 and "exceeds" in r.json()["error_description"]


def test_metrics_count_admissions_by_outcome() -> None:
    client = _client()
    client.post("/mutate", json=_review(_pod({"jitmesh.io/inject": "true"}, {"jitmesh.io/audiences": "a"})))
    client.post("/mutate", json=_review(_pod({"jitmesh.io/inject": "false"})))
    client.post("/mutate", json=_review(_pod({"jitmesh.io/inject": "false"})))
    client.post("/mutate", content=b"{")
    text = client.get("/metrics").text
    assert 'jitmesh_injector_admissions_total{outcome="injected"} 1.0' in text
    assert 'jitmesh_injector_admissions_total{outcome="unchanged"} 2.0' in text
    assert 'jitmesh_injector_admissions_total{outcome="bad_request"} 1.0' in text
    assert 'jitmesh_injector_admission_duration_seconds_count{outcome="injected"} 1.0' in text


def test_health_endpoints_answer() -> None:
    client = _client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
