"""Revocation with a real kube-apiserver: a Kubernetes identity that
SubjectAccessReview allows `admin` on `brokers.jitmesh.io` is an admin, named in the audit;
and a pod that is deleted loses its tokens, revoked by the broker's pod watcher."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kubernetes import client

from tests.fixtures.broker import BrokerHandle
from tests.fixtures.kube import KubeControlPlane
from tests.integration.revocation_support import EventReader, audit, introspect, wait_for

pytestmark = pytest.mark.kube

SUBJECT_AUDIENCE = "jitmesh"
BROKER_USER = "jitmesh-broker"
POLICY = """package jitmesh.authz

decision := {"allow": true, "scopes": input.request.scopes, "ttl_seconds": 300, "reasons": []}
"""


@dataclass
class Pod:
    namespace: str
    service_account: str
    name: str
    uid: str


def rbac_role(api: client.ApiClient, rules: list[client.V1PolicyRule], subject: client.RbacV1Subject) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    name = f"jitmesh-revocation-test-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=rules))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
        subjects=[subject]))


@pytest.fixture(scope="module")
def broker(kube: KubeControlPlane, kube_api: client.ApiClient, module_make_opa: Callable[..., Any],
           module_broker_factory: Callable[..., BrokerHandle], tmp_path_factory: pytest.TempPathFactory
           ) -> BrokerHandle:
    # what charts/jitmesh/templates/broker-rbac.yaml grants the broker
    rbac_role(kube_api, [
        client.V1PolicyRule(api_groups=["authentication.k8s.io"], resources=["tokenreviews"], verbs=["create"]),
        client.V1PolicyRule(api_groups=["authorization.k8s.io"], resources=["subjectaccessreviews"],
                            verbs=["create"]),
        client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
    ], client.RbacV1Subject(kind="User", name=BROKER_USER, api_group="rbac.authorization.k8s.io"))
    policy = tmp_path_factory.mktemp("policy")
    (policy / "decision.rego").write_text(POLICY)
    return module_broker_factory(module_make_opa(policy).url, attestation="tokenreview",
                                 kubeconfig=kube.kubeconfig(BROKER_USER), subject_audience=SUBJECT_AUDIENCE)


def sa_token(api: client.ApiClient, namespace: str, sa: str, audience: str | None = None,
             pod: Pod | None = None) -> str:
    spec = client.V1TokenRequestSpec(audiences=[audience] if audience else [], expiration_seconds=600)
    if pod is not None:
        spec.bound_object_ref = client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.name,
                                                              uid=pod.uid)
    got = client.CoreV1Api(api).create_namespaced_service_account_token(
        sa, namespace, client.AuthenticationV1TokenRequest(spec=spec))
    return str(got.status.token)


def make_pod(api: client.ApiClient, namespace: str, name: str = "api-0") -> Pod:
    pod = client.CoreV1Api(api).create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(service_account_name="api",
                              containers=[client.V1Container(name="api", image="registry.example/api:1")])))
    return Pod(namespace, "api", pod.metadata.name, pod.metadata.uid)


def test_a_serviceaccount_allowed_admin_on_brokers_may_revoke_and_is_named_in_the_audit(
        kube_api: client.ApiClient, make_namespace: Callable[..., str], broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("revoker",))
    rbac_role(kube_api, [client.V1PolicyRule(api_groups=["jitmesh.io"], resources=["brokers"], verbs=["admin"])],
              client.RbacV1Subject(kind="ServiceAccount", name="revoker", namespace=ns))
    token = sa_token(kube_api, ns, "revoker", SUBJECT_AUDIENCE)  # a token for the broker, not the API server
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers={"Authorization": f"Bearer {token}"},
                   json={"audience": f"aud-{ns}", "reason": "by a Kubernetes admin"}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["created_by"] == f"system:serviceaccount:{ns}:revoker"
    record = next(x for x in audit(broker, event="revoked") if x["details"].get("revocation_id") == r.json()["id"])
    assert record["details"]["actor"] == f"system:serviceaccount:{ns}:revoker"
    assert record["details"]["via"] == "subjectaccessreview"


def test_a_serviceaccount_without_the_rule_is_not_an_admin(kube_api: client.ApiClient,
                                                           make_namespace: Callable[..., str],
                                                           broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("nobody",))
    token = sa_token(kube_api, ns, "nobody", SUBJECT_AUDIENCE)
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers={"Authorization": f"Bearer {token}"},
                   json={"audience": "x", "reason": "r"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def test_deleting_a_pod_revokes_its_tokens_as_the_pod_watcher(kube_api: client.ApiClient,
                                                              make_namespace: Callable[..., str],
                                                              broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("default", "api"))
    pod = make_pod(kube_api, ns)
    bystander = make_pod(kube_api, ns, "api-1")
    r = broker.exchange(sa_token(kube_api, ns, "api", SUBJECT_AUDIENCE, pod), "orders-db", scope="read")
    assert r.status_code == 200, r.text
    held = r.json()["access_token"]
    other = broker.exchange(sa_token(kube_api, ns, "api", SUBJECT_AUDIENCE, bystander), "orders-db").json()
    with EventReader(broker.url, broker.admin_token, read_timeout=30) as events:
        events.next_of("ready")
        client.CoreV1Api(kube_api).delete_namespaced_pod(pod.name, ns, grace_period_seconds=0)
        deleted_at = time.monotonic()
        _, ev = events.next_of("revoked")
        took = time.monotonic() - deleted_at
    assert ev["kind"] == "pod_uid" and ev["value"] == pod.uid and ev["created_by"] == "system:podwatch"
    assert ev["id"] == f"pod-deleted-{pod.uid}" and f"{ns}/{pod.name}" in ev["reason"]
    assert took < 5.0
    assert introspect(broker, held) == {"active": False}
    assert introspect(broker, other["access_token"])["active"] is True
    record = next(x for x in audit(broker, event="revoked") if x["pod_uid"] == pod.uid)
    assert record["details"]["actor"] == "system:podwatch"


def test_a_pod_deleted_while_the_broker_was_down_is_revoked_when_it_is_back(
        kube_api: client.ApiClient, make_namespace: Callable[..., str], broker: BrokerHandle) -> None:
    ns = make_namespace(service_accounts=("default", "api"))
    pod = make_pod(kube_api, ns)
    r = broker.exchange(sa_token(kube_api, ns, "api", SUBJECT_AUDIENCE, pod), "orders-db", scope="read")
    assert r.status_code == 200, r.text
    broker.stop()
    client.CoreV1Api(kube_api).delete_namespaced_pod(pod.name, ns, grace_period_seconds=0)
    broker.process.start(timeout=30)  # remembers the pod from the audit trail, lists, finds it gone
    wait_for(lambda: introspect(broker, r.json()["access_token"]) == {"active": False}, timeout=15,
             what="token of the pod deleted meanwhile revoked", step=0.3)


