"""The broker's Kubernetes attestation against a real kube-apiserver: pod-bound ServiceAccount
tokens from the TokenRequest API, checked online (TokenReview) and offline (the API server's
/openid/v1/jwks), and refused once the pod is gone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from kubernetes import client

from tests.fixtures.broker import BrokerHandle
from tests.fixtures.kube import KubeControlPlane, grant_cluster_role

pytestmark = pytest.mark.kube

SUBJECT_AUDIENCE = "jitmesh"
BROKER_USER = "jitmesh-broker"
REFUSAL_WINDOW = 25.0  # kube-apiserver caches successful token authentications for 10 s

# Allows only pod-bound subjects: a grant proves the broker saw the binding.
POLICY = """package jitmesh.authz

default decision := {"allow": false, "scopes": [], "ttl_seconds": 0, "reasons": ["not bound to a pod"]}

decision := {"allow": true, "scopes": input.request.scopes, "ttl_seconds": 60, "reasons": []} if {
\tinput.subject.pod != null
}
"""


@dataclass
class Workload:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policy")
    (d / "decision.rego").write_text(POLICY)
    return d


BROKER_RULES = [  # what the chart grants the broker
    client.V1PolicyRule(api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]),
    client.V1PolicyRule(api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"], verbs=["create"]),
    client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
]


@pytest.fixture(scope="module")
def broker_rbac(kube_api: client.ApiClient) -> None:
    grant_cluster_role(kube_api, BROKER_USER, BROKER_RULES)


@pytest.fixture
def workload(kube_api: client.ApiClient, make_namespace: Callable[..., str]) -> Workload:
    ns = make_namespace(service_accounts=("default", "api"))
    core = client.CoreV1Api(kube_api)
    pod = core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="api-0", labels={"app": "api"}),
        spec=client.V1PodSpec(service_account_name="api",
                              containers=[client.V1Container(name="api", image="registry.example/api:1")])))
    return Workload(ns, "api", pod.metadata.name, pod.metadata.uid)


def _token_request(api: client.ApiClient, w: Workload, audience: str = SUBJECT_AUDIENCE) -> str:
    """What the kubelet does for the projected token volume: a TokenRequest bound to the pod."""
    got = client.CoreV1Api(api).create_namespaced_service_account_token(
        w.service_account, w.namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[audience], expiration_seconds=600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=w.pod_name,
                                                           uid=w.pod_uid))))
    return str(got.status.token)


def _token_review(api: client.ApiClient, token: str) -> Any:
    return client.AuthenticationV1Api(api).create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=[SUBJECT_AUDIENCE]))).status


def _delete_pod(api: client.ApiClient, w: Workload) -> None:
    core = client.CoreV1Api(api)
    core.delete_namespaced_pod(w.pod_name, w.namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 10
    while any(p.metadata.name == w.pod_name for p in core.list_namespaced_pod(w.namespace).items):
        assert time.monotonic() < deadline, "the pod was not deleted"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tokenreview_broker(kube: KubeControlPlane, broker_rbac: None, policy_dir: Path,
                       module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]
                       ) -> BrokerHandle:
    opa = module_make_opa(policy_dir)
    return module_broker_factory(opa.url, attestation="tokenreview", kubeconfig=kube.kubeconfig(BROKER_USER),
                                 subject_audience=SUBJECT_AUDIENCE)


@pytest.fixture(scope="module")
def jwks_broker(kube: KubeControlPlane, broker_rbac: None, policy_dir: Path,
                module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle],
                tmp_path_factory: pytest.TempPathFactory) -> BrokerHandle:
    r = kube.get("/openid/v1/jwks")
    assert r.status_code == 200, r.text
    jwks_file = tmp_path_factory.mktemp("kube-jwks") / "jwks.json"
    jwks_file.write_text(json.dumps(r.json()))
    opa = module_make_opa(policy_dir)
    return module_broker_factory(opa.url, attestation="jwks", jwks_file=jwks_file,
                                 subject_issuer=kube.service_account_issuer, kubeconfig=kube.kubeconfig(BROKER_USER),
                                 pod_lookup=True, subject_audience=SUBJECT_AUDIENCE)


def _assert_issued_for(r: Any, w: Workload) -> None:
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == f"system:serviceaccount:{w.namespace}:{w.service_account}"
    assert claims["aud"] == "orders-db" and claims["scope"] == "read"
    assert claims["kubernetes.io"]["pod"] == {"name": w.pod_name, "uid": w.pod_uid}


def _refused_within(exchange: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        r = exchange()
        if r.status_code != 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def test_pod_bound_token_is_accepted_through_tokenreview(kube_api: client.ApiClient, workload: Workload,
                                                         tokenreview_broker: BrokerHandle) -> None:
    token = _token_request(kube_api, workload)
    _assert_issued_for(tokenreview_broker.exchange(token, "orders-db", scope="read"), workload)


def test_pod_bound_token_is_accepted_offline_with_the_api_servers_jwks(kube_api: client.ApiClient,
                                                                      workload: Workload,
                                                                      jwks_broker: BrokerHandle) -> None:
    token = _token_request(kube_api, workload)
    _assert_issued_for(jwks_broker.exchange(token, "orders-db", scope="read"), workload)


def test_token_for_another_audience_is_refused_in_both_modes(kube_api: client.ApiClient, workload: Workload,
                                                             tokenreview_broker: BrokerHandle,
                                                             jwks_broker: BrokerHandle) -> None:
    token = _token_request(kube_api, workload, audience="some-other-service")
    for broker in (tokenreview_broker, jwks_broker):
        r = broker.exchange(token, "orders-db", scope="read")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def test_after_the_pod_is_deleted_tokenreview_refuses_and_no_token_is_issued(
        kube_api: client.ApiClient, workload: Workload, tokenreview_broker: BrokerHandle) -> None:
    token = _token_request(kube_api, workload)
    assert _token_review(kube_api, token).authenticated is True
    _assert_issued_for(tokenreview_broker.exchange(token, "orders-db", scope="read"), workload)

    _delete_pod(kube_api, workload)

    deadline = time.monotonic() + REFUSAL_WINDOW
    while (status := _token_review(kube_api, token)).authenticated and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not status.authenticated, "TokenReview still accepts the token of a deleted pod"
    r = _refused_within(lambda: tokenreview_broker.exchange(token, "orders-db", scope="read"), REFUSAL_WINDOW)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert tokenreview_broker.exchange(token, "orders-db", scope="read").status_code == 400


def test_after_the_pod_is_deleted_jwks_mode_with_pod_lookup_issues_nothing(
        kube_api: client.ApiClient, workload: Workload, jwks_broker: BrokerHandle) -> None:
    token = _token_request(kube_api, workload)
    _assert_issued_for(jwks_broker.exchange(token, "orders-db", scope="read"), workload)

    _delete_pod(kube_api, workload)

    r = _refused_within(lambda: jwks_broker.exchange(token, "orders-db", scope="read"), REFUSAL_WINDOW)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert f"{workload.namespace}/{workload.pod_name}" in r.json()["error_description"]
