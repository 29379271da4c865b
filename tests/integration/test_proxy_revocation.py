"""Revocation honoured where the token is used: the proxy learns it from the broker's event
stream (never per request), and fails closed when that stream is gone too long
(docs/contract.md §2, §7)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream
from tests.integration.revocation_support import revoked, wait_for

POLICIES = Path(__file__).resolve().parents[2] / "policies"
CLIENT = "system:serviceaccount:demo:demo-app"


@pytest.fixture
def env(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> dict[str, Any]:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=opa.url,
                       extra=["--stream-max-down", "2"])
    return {"opa": opa, "broker": broker, "proxy": proxy, "upstream": upstream, "make_proxy": make_proxy}


def token(broker: BrokerHandle) -> str:
    r = broker.exchange(broker.mint("demo", "demo-app"), "orders-api", scope="read", ttl=300)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def status(proxy: ProxyProcess, t: str) -> int:
    return httpx.get(proxy.url + "/orders/1", headers={"Authorization": f"Bearer {t}"}, timeout=10).status_code


def test_a_revoked_subject_is_refused_at_the_proxy_within_a_second(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    assert status(env["proxy"], t) == 200
    revoked(env["broker"], subject=CLIENT)
    wait_for(lambda: status(env["proxy"], t) == 401, timeout=1.0, what="the proxy refusing the revoked subject")


def test_a_token_its_holder_revoked_is_refused(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    assert status(env["proxy"], t) == 200
    assert httpx.post(env["broker"].url + "/revoke", data={"token": t}).status_code == 200
    wait_for(lambda: status(env["proxy"], t) == 401, timeout=2.0, what="the proxy refusing the revoked jti")


def test_a_revoked_served_audience_is_refused(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    revoked(env["broker"], audience="orders-api")
    wait_for(lambda: status(env["proxy"], t) == 401, timeout=2.0, what="the audience revocation applied")


def test_a_revocation_made_before_the_proxy_started_is_honoured(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    revoked(env["broker"], subject=CLIENT)
    later = env["make_proxy"](env["broker"], ["orders-api"], upstream=env["upstream"].url, opa_url=env["opa"].url)
    assert status(later, t) == 401


def test_with_the_broker_down_valid_tokens_work_within_the_bound_then_503(env: dict[str, Any]) -> None:
    t = token(env["broker"])
    env["broker"].kill()
    assert status(env["proxy"], t) == 200
    wait_for(lambda: status(env["proxy"], t) == 503, timeout=10.0, what="503 once the stream is down too long")
    assert httpx.get(env["proxy"].metrics_url + "/readyz").status_code == 503
    env["broker"].restart()
    wait_for(lambda: status(env["proxy"], t) == 200, timeout=15.0, what="service again once the stream is back")


def test_revocations_made_while_the_proxy_was_disconnected_are_replayed(
        env: dict[str, Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = env["broker"]
    other = broker_factory(env["opa"].url, store=broker.store_url, issuer=broker.issuer)  # a replica
    t = token(broker)
    broker.stop()
    revoked(other, subject=CLIENT)
    broker.restart()
    wait_for(lambda: status(env["proxy"], t) == 401, timeout=15.0, what="the replayed revocation applied")
