"""charts/jitmesh rendered by a real helm and checked by the real API server (server-side dry
run with strict field validation): every object is one kube-apiserver 1.34 accepts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes import client, utils

from tests.unit.test_injector_chart import REQUIRED, render

pytestmark = pytest.mark.kube


def _accepted(api: client.ApiClient, docs: list[dict[str, Any]], namespace: str) -> None:
    for doc in docs:
        utils.create_from_dict(api, doc, namespace=namespace, dry_run="All", field_validation="Strict")


def test_default_chart_is_accepted_by_the_api_server(kube_api: client.ApiClient) -> None:
    docs = render(*REQUIRED)
    ns = f"jitmesh-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    _accepted(kube_api, [_in(d, ns) for d in docs], ns)


def test_chart_with_every_option_is_accepted_by_the_api_server(kube_api: client.ApiClient) -> None:
    docs = render(*REQUIRED, "--set", "broker.attestation=jwks",
                  "--set", "broker.jwksUrl=https://kubernetes.default.svc/openid/v1/jwks",
                  "--set", "broker.adminTokens={a,b}", "--set", "broker.storeSecret=pg",
                  "--set", "injector.nativeSidecars=false", "--set", "injector.defaultAudiences=orders-db",
                  "--set", "broker.shadowPolicyPath=jitmesh/candidate/authz/decision")
    ns = f"jitmesh-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube_api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    _accepted(kube_api, [_in(d, ns) for d in docs], ns)


def _in(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The rendered objects name namespace `jitmesh`; move them to the test's own."""
    if doc["metadata"].get("namespace") == "jitmesh":
        doc["metadata"]["namespace"] = namespace
    return doc
