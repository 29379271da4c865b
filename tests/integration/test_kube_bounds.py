"""Strangers cannot make the broker work the API server without bound, against a real
kube-apiserver: a garbage bearer token repeated on admin endpoints and the event stream is
reviewed once per cache window, a stalled API server stalls neither issuance nor readiness,
a client address past its burst of reviews gets 429 with Retry-After, an admin's token must
be for the broker's audience, and a Kubernetes identity allowed `get` on brokers is a reader."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from kubernetes import client

from tests.fixtures.broker import BrokerHandle
from tests.fixtures.kube import KubeControlPlane

pytestmark = pytest.mark.kube

SUBJECT_AUDIENCE = "jitmesh"
BROKER_USER = "jitmesh-broker"
POLICY = """package jitmesh.authz

decision := {"allow": true, "scopes": input.request.scopes, "ttl_seconds": 300, "reasons": []}
"""


def cluster_role(api: client.ApiClient, rules: list[client.V1PolicyRule], subject: client.RbacV1Subject) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"jitmesh-bounds-test-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=rules))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
        subjects=[subject]))


def sa_token(api: client.ApiClient, namespace: str, sa: str, audience: str | None = None) -> str:
    spec = client.V1TokenRequestSpec(audiences=[audience] if audience else [], expiration_seconds=600)
    got = client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, namespace, client.AuthenticationV1TokenRequest(spec=spec))
    return str(got.status.token)


def token_reviews(kube: KubeControlPlane) -> float:
    """TokenReviews the API server has answered so far (its own request counter)."""
    r = kube.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="tokenreviews"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def policy_url(module_make_opa: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    policy = tmp_path_factory.mktemp("policy")
    (policy / "decision.rego").write_text(POLICY)
    return str(module_make_opa(policy).url)


@pytest.fixture(scope="module")
def broker_rights(kube_api: client.ApiClient) -> None:
    # what charts/jitmesh/templates/broker-rbac.yaml grants the broker
    cluster_role(kube_api, [
        client.V1PolicyRule(api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]),
        client.V1PolicyRule(api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"],
                            verbs=["create"]),
        client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
    ], client.RbacV1Subject(kind="User", name=BROKER_USER, api_group="rbac.authorization.k8s.io"))


@pytest.fixture(scope="module")
def review_broker(kube: KubeControlPlane, broker_rights: None, policy_url: str,
                  module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    """Attestation by TokenReview: every stranger's token could cost API-server calls."""
    return module_broker_factory(policy_url, attestation="tokenreview", kubeconfig=kube.kubeconfig(BROKER_USER),
                                 subject_audience=SUBJECT_AUDIENCE)


@pytest.fixture
def jwks_broker(kube: KubeControlPlane, broker_rights: None, policy_url: str,
                broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    """Offline attestation (JWKS), with Kubernetes admins: /token needs no API server."""
    return broker_factory(policy_url, kubeconfig=kube.kubeconfig(BROKER_USER), subject_audience=SUBJECT_AUDIENCE)


def test_a_garbage_token_repeated_on_admin_endpoints_and_the_event_stream_is_reviewed_once_per_window(
        kube: KubeControlPlane, review_broker: BrokerHandle) -> None:
    garbage = {"Authorization": f"Bearer garbage-{uuid.uuid4().hex}"}
    before = token_reviews(kube)
    for _ in range(15):
        r = httpx.get(f"{review_broker.url}/v1/admin/audit", headers=garbage, timeout=10)
        assert r.status_code == 401, r.text
        r = httpx.get(f"{review_broker.url}/v1/revocations/events", headers=garbage, timeout=10)
        assert r.status_code == 401, r.text
    # one review as a workload, one as an admin; never one per request
    assert token_reviews(kube) - before <= 2


def test_the_api_servers_words_about_a_refused_token_stay_in_the_audit(
        kube: KubeControlPlane, review_broker: BrokerHandle) -> None:
    r = review_broker.exchange(f"garbage.{uuid.uuid4().hex}.x", "orders-db")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    said = r.json()["error_description"]
    assert said == "TokenReview did not authenticate the subject token"
    records = httpx.get(f"{review_broker.url}/v1/admin/audit", headers=review_broker.admin_headers(),
                        params={"decision_id": r.json()["decision_id"]}, timeout=10).json()["records"]
    assert records and records[0]["details"].get("tokenreview_error")


@pytest.fixture
def stalled(kube: KubeControlPlane) -> Iterator[Callable[[], None]]:
    apiserver = next(p for p in kube.processes if p.name == "kube-apiserver")
    stopped: list[bool] = []

    def stop() -> None:
        apiserver.signal(signal.SIGSTOP)
        stopped.append(True)

    yield stop
    if stopped:
        apiserver.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if kube.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)


def test_a_stalled_api_server_under_a_flood_of_admin_tokens_stalls_neither_issuance_nor_readiness(
        jwks_broker: BrokerHandle, stalled: Callable[[], None]) -> None:
    subject_token = jwks_broker.mint("payments", "api")
    assert jwks_broker.exchange(subject_token, "orders-db", scope="read").status_code == 200
    stalled()

    def stranger(i: int) -> int:
        try:
            return httpx.get(f"{jwks_broker.url}/v1/admin/audit", timeout=60,
                             headers={"Authorization": f"Bearer stranger-{i}-{uuid.uuid4().hex}"}).status_code
        except httpx.TimeoutException:
            return 0

    with ThreadPoolExecutor(40) as pool:
        flood = [pool.submit(stranger, i) for i in range(40)]
        time.sleep(1.0)  # the flood is waiting on the API server now
        for _ in range(5):
            r = jwks_broker.exchange(subject_token, "orders-db", scope="read")
            assert r.status_code == 200, r.text
            assert httpx.get(f"{jwks_broker.url}/readyz", timeout=10).status_code == 200
        answers = [f.result() for f in flood]
    # every stranger is answered (503: the API server did not answer in time; 429: past its burst)
    assert set(answers) <= {503, 429}, answers


def test_unrecognised_tokens_past_the_per_address_burst_are_answered_429_with_retry_after(
        kube: KubeControlPlane, broker_rights: None, policy_url: str,
        broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(policy_url, kubeconfig=kube.kubeconfig(BROKER_USER), admin_review_rate=0.2,
                            admin_review_burst=3)
    answers = [httpx.get(f"{broker.url}/v1/admin/audit", timeout=10,
                         headers={"Authorization": f"Bearer stranger-{i}-{uuid.uuid4().hex}"}) for i in range(8)]
    assert [a.status_code for a in answers[:3]] == [401, 401, 401]
    limited = answers[3:]
    assert all(a.status_code == 429 for a in limited), [a.text for a in limited]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    # the broker's own admin token costs no review and is never limited
    assert httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(), timeout=10).status_code == 200


def test_an_admin_token_minted_for_the_api_server_rather_than_the_broker_is_not_an_admin(
        kube_api: client.ApiClient, make_namespace: Callable[..., str], review_broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("ops",))
    cluster_role(kube_api, [client.V1PolicyRule(api_groups=["jitmesh.io"], resources=["brokers"], verbs=["admin"])],
                 client.RbacV1Subject(kind="ServiceAccount", name="ops", namespace=ns))
    for_api_server = sa_token(kube_api, ns, "ops")
    r = httpx.get(f"{review_broker.url}/v1/admin/audit", headers={"Authorization": f"Bearer {for_api_server}"},
                  timeout=10)
    assert r.status_code == 401, r.text
    for_broker = sa_token(kube_api, ns, "ops", SUBJECT_AUDIENCE)
    r = httpx.get(f"{review_broker.url}/v1/admin/audit", headers={"Authorization": f"Bearer {for_broker}"},
                  timeout=10)
    assert r.status_code == 200, r.text


def test_a_kubernetes_identity_allowed_get_on_brokers_is_a_reader(
        kube_api: client.ApiClient, make_namespace: Callable[..., str], review_broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("verifier",))
    cluster_role(kube_api, [client.V1PolicyRule(api_groups=["jitmesh.io"], resources=["brokers"], verbs=["get"])],
                 client.RbacV1Subject(kind="ServiceAccount", name="verifier", namespace=ns))
    reader = {"Authorization": f"Bearer {sa_token(kube_api, ns, 'verifier', SUBJECT_AUDIENCE)}"}
    r = httpx.post(f"{review_broker.url}/introspect", data={"token": "not-ours"}, headers=reader, timeout=10)
    assert r.status_code == 200 and r.json() == {"active": False}, r.text
    with httpx.stream("GET", f"{review_broker.url}/v1/revocations/events", headers=reader, timeout=10) as s:
        assert s.status_code == 200
    viewers = [x["details"]["actor"] for x in httpx.get(
        f"{review_broker.url}/v1/admin/audit", headers=review_broker.admin_headers(),
        params={"event": "admin", "limit": 1000}, timeout=10).json()["records"]
        if x["details"].get("action") == "revocation.events"]
    assert f"system:serviceaccount:{ns}:verifier" in viewers  # it follows everything, as a reader
    r = httpx.post(f"{review_broker.url}/v1/admin/revocations", headers=reader,
                   json={"audience": f"aud-{ns}", "reason": "a reader tries"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope", r.text


def test_stream_subscriptions_that_need_a_token_review_are_limited_per_address(
        kube: KubeControlPlane, broker_rights: None, policy_url: str,
        broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(policy_url, attestation="tokenreview", kubeconfig=kube.kubeconfig(BROKER_USER),
                            subject_audience=SUBJECT_AUDIENCE, admin_review_rate=0.2, admin_review_burst=4)
    before = token_reviews(kube)
    answers = [httpx.get(f"{broker.url}/v1/revocations/events", timeout=10,
                         headers={"Authorization": f"Bearer stranger-{uuid.uuid4().hex}"}) for _ in range(10)]
    assert {a.status_code for a in answers} == {401, 429}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
    assert token_reviews(kube) - before <= 4 + 4  # at most the burst, as a workload and as an admin
    with httpx.stream("GET", f"{broker.url}/v1/revocations/events", headers=broker.admin_headers(),
                      timeout=10) as admin_stream:
        assert admin_stream.status_code == 200  # the admin token file is never limited
