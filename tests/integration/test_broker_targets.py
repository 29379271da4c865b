"""What a request names that does not exist is the client's error, per RFC 8693 section 2.2.2:
an unknown audience is invalid_target, a scope no grant has is invalid_scope, both 400; a
known target the policy refuses this subject stays access_denied (403). A real broker and a
real OPA on the shipped policy; `--resource URI=AUDIENCE` maps RFC 8693 resource URIs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
POD = PodRef("demo-app-5f7c", "9b2f0e4a-0000-4000-8000-000000000001")
ORDERS_URI = "https://orders.example.com/api"


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(SHIPPED).url, resource=f"{ORDERS_URI}=orders-api")


def ask(broker: BrokerHandle, **form: str) -> httpx.Response:
    sa = broker.mint("demo", "demo-app", pod=POD)
    return httpx.post(f"{broker.url}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": sa,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", **form})


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert "access_token" not in body and body["decision_id"]
    return body


def test_an_unknown_audience_is_invalid_target(broker: BrokerHandle) -> None:
    body = error_of(ask(broker, audience="warehouse", scope="read"), 400)
    assert body["error"] == "invalid_target"
    assert 'audience "warehouse" is not known' in body["error_description"]


def test_a_scope_no_grant_has_is_invalid_scope(broker: BrokerHandle) -> None:
    body = error_of(ask(broker, audience="orders-api", scope="read admin"), 400)
    assert body["error"] == "invalid_scope"
    assert 'scope "admin"' in body["error_description"]


def test_a_known_audience_not_granted_to_this_subject_is_access_denied(broker: BrokerHandle) -> None:
    body = error_of(ask(broker, audience="ledger", scope="read"), 403)
    assert body["error"] == "access_denied"


def test_a_known_resource_uri_is_the_audience(broker: BrokerHandle) -> None:
    r = ask(broker, resource=ORDERS_URI, scope="read")
    assert r.status_code == 200, r.text
    claims = httpx.post(f"{broker.url}/introspect", data={"token": r.json()["access_token"]},
                        headers=broker.admin_headers()).json()
    assert claims["aud"] == "orders-api"


def test_an_unknown_resource_uri_is_invalid_target(broker: BrokerHandle) -> None:
    r = ask(broker, resource="https://elsewhere.example.com/", scope="read")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"


def test_a_resource_beside_a_different_audience_is_invalid_target(broker: BrokerHandle) -> None:
    r = ask(broker, resource=ORDERS_URI, audience="payments-api", scope="read")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"
