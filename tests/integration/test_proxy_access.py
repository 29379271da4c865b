"""`jitmesh proxy` in front of a real upstream, with a real broker and a real OPA on the
shipped policies (docs/contract.md §7): allow, deny, what the upstream sees, /v1/check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def env(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> dict[str, Any]:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=opa.url)
    return {"opa": opa, "broker": broker, "proxy": proxy, "upstream": upstream}


def token(broker: BrokerHandle, scope: str = "read", audience: str = "orders-api") -> str:
    r = broker.exchange(broker.mint("demo", "demo-app"), audience, scope=scope, ttl=120)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def bearer(t: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}", **extra}


def test_an_allowed_request_reaches_the_upstream_with_who_called(env: dict[str, Any]) -> None:
    r = httpx.get(env["proxy"].url + "/orders/42?x=1", headers=bearer(token(env["broker"])))
    assert r.status_code == 200, r.text
    seen = dict(r.json()["headers"])
    assert r.json()["path"] == "/orders/42?x=1"
    assert seen["x-jitmesh-subject"] == "system:serviceaccount:demo:demo-app"
    assert seen["x-jitmesh-scope"] == "read"
    assert seen["x-jitmesh-decision-id"]
    assert "authorization" not in seen


def test_the_upstream_never_sees_the_token_or_a_dpop_header(env: dict[str, Any]) -> None:
    r = httpx.get(env["proxy"].url + "/orders", headers=bearer(token(env["broker"]), DPoP="x.y.z"))
    names = {k for k, _ in r.json()["headers"]}
    assert r.status_code == 200 and not names & {"authorization", "dpop"}


def test_a_forged_subject_header_from_the_client_is_dropped(env: dict[str, Any]) -> None:
    headers = bearer(token(env["broker"]), **{"X-Jitmesh-Subject": "system:serviceaccount:kube-system:admin",
                                              "X-Jitmesh-Other": "1"})
    r = httpx.get(env["proxy"].url + "/orders", headers=headers)
    seen = r.json()["headers"]
    assert [v for k, v in seen if k == "x-jitmesh-subject"] == ["system:serviceaccount:demo:demo-app"]
    assert not [k for k, _ in seen if k == "x-jitmesh-other"]


def test_a_client_cannot_pose_as_another_address_with_forwarding_headers(env: dict[str, Any]) -> None:
    # the peer's address is the request's source (in the policy input, and appended for the
    # upstream), even from loopback: an X-Forwarded-For the client sends is only carried along
    headers = bearer(token(env["broker"]), **{"X-Forwarded-For": "10.9.9.9", "X-Forwarded-Proto": "https"})
    r = httpx.get(env["proxy"].url + "/orders", headers=headers)
    assert r.status_code == 200, r.text
    assert [v for k, v in r.json()["headers"] if k == "x-forwarded-for"] == ["10.9.9.9, 127.0.0.1"]


def test_a_denied_endpoint_is_403_with_reasons_and_a_decision_id(env: dict[str, Any]) -> None:
    r = httpx.delete(env["proxy"].url + "/orders/42", headers=bearer(token(env["broker"], scope="read")))
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "access_denied"
    assert body["reasons"] == ["DELETE /orders/{id} needs scope(s) write; the token has read"]
    assert body["decision_id"]


def test_request_and_response_bodies_stream_through(env: dict[str, Any]) -> None:
    t = token(env["broker"], scope="read write")

    def chunks() -> Any:
        for _ in range(64):
            yield b"y" * 4096

    r = httpx.post(env["proxy"].url + "/orders", headers=bearer(t), content=chunks())
    assert r.status_code == 200 and r.json()["body_bytes"] == 64 * 4096
    with httpx.stream("GET", env["proxy"].url + "/orders", headers=bearer(t)) as s:
        assert s.status_code == 200


def test_each_decision_is_counted_and_logged_with_its_id(env: dict[str, Any]) -> None:
    r = httpx.delete(env["proxy"].url + "/orders/1", headers=bearer(token(env["broker"])))
    decision_id = r.json()["decision_id"]
    metrics = httpx.get(env["proxy"].metrics_url + "/metrics").text
    assert 'jitmesh_proxy_decisions_total{audience="orders-api",outcome="deny"} 1.0' in metrics
    assert decision_id in env["proxy"].output()


def test_readyz_says_keys_and_event_stream_are_current(env: dict[str, Any]) -> None:
    r = httpx.get(env["proxy"].metrics_url + "/readyz")
    assert r.status_code == 200 and r.json()["keys"] and r.json()["events"]


def test_check_answers_nginx_auth_request_from_the_original_uri(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    ok = httpx.get(env["proxy"].url + "/v1/check",
                   headers=bearer(t, **{"X-Original-Method": "GET", "X-Original-URI": "/orders/7"}))
    assert ok.status_code == 200 and ok.headers["x-jitmesh-subject"] == "system:serviceaccount:demo:demo-app"
    no = httpx.get(env["proxy"].url + "/v1/check",
                   headers=bearer(t, **{"X-Original-Method": "DELETE", "X-Original-URI": "/orders/7"}))
    assert no.status_code == 403


def test_check_answers_envoy_ext_authz_with_the_path_behind_the_prefix(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    assert httpx.get(env["proxy"].url + "/v1/check/orders/7", headers=bearer(t)).status_code == 200
    assert httpx.delete(env["proxy"].url + "/v1/check/orders/7", headers=bearer(t)).status_code == 403
    assert httpx.get(env["proxy"].url + "/v1/check/orders/7").status_code == 401
