"""Fail closed on the policy engine: OPA down, slow, erroring, or answering outside the
contract means no token, the right error, and an audit record saying which."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"
MakeOPA = Callable[..., Any]
Factory = Callable[..., BrokerHandle]


def audit_record(broker: BrokerHandle, decision_id: str) -> dict[str, Any]:
    r = httpx.get(f"{broker.url}/v1/admin/audit", params={"limit": 1000}, headers=broker.admin_headers())
    assert r.status_code == 200, r.text
    return next(x for x in r.json()["records"] if x["decision_id"] == decision_id)


def ask(broker: BrokerHandle) -> httpx.Response:
    return broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read")


def assert_no_token(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == error and "access_token" not in body
    return body


def test_opa_down_is_503_with_retry_after_and_audited_as_error(make_opa: MakeOPA,
                                                                broker_factory: Factory) -> None:
    opa = make_opa(POLICIES / "grant")
    broker = broker_factory(opa.url)
    opa.stop()
    r = ask(broker)
    body = assert_no_token(r, 503, "temporarily_unavailable")
    assert int(r.headers["retry-after"]) > 0
    rec = audit_record(broker, body["decision_id"])
    assert rec["event"] == "error" and rec["details"]["error"] == "temporarily_unavailable"
    assert rec["subject"] == "system:serviceaccount:payments:api"


def test_readyz_is_503_while_opa_is_down(make_opa: MakeOPA,
                                         broker_factory: Factory) -> None:
    opa = make_opa(POLICIES / "grant")
    broker = broker_factory(opa.url)
    opa.stop()
    r = httpx.get(f"{broker.url}/readyz")
    assert r.status_code == 503 and r.json()["checks"]["opa"] != "ok"
    assert httpx.get(f"{broker.url}/healthz").status_code == 200


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_slow_opa_is_503_within_the_opa_timeout(make_opa: MakeOPA, broker_factory: Factory,
                                                blackhole: str, tmp_path: Path) -> None:
    policy = tmp_path / "slow"
    policy.mkdir()
    (policy / "slow.rego").write_text(
        "package jitmesh.authz\n\n"
        f'decision := {{"allow": true, "scopes": ["read"]}} if http.send({{"method": "GET", "url": "{blackhole}", '
        '"timeout": "20s"}).status_code == 200\n')
    broker = broker_factory(make_opa(policy).url, opa_timeout=0.5)
    started = time.monotonic()
    body = assert_no_token(ask(broker), 503, "temporarily_unavailable")
    assert time.monotonic() - started < 5
    assert audit_record(broker, body["decision_id"])["event"] == "error"


def test_opa_evaluation_error_is_503(make_opa: MakeOPA, broker_factory: Factory) -> None:
    broker = broker_factory(make_opa(POLICIES / "conflict").url)
    assert_no_token(ask(broker), 503, "temporarily_unavailable")


def test_allow_yes_string_is_access_denied_audited_as_policy_error(make_opa: MakeOPA,
                                                                   broker_factory: Factory) -> None:
    broker = broker_factory(make_opa(POLICIES / "allow_yes").url)
    body = assert_no_token(ask(broker), 403, "access_denied")
    assert "allow" in body["error_description"]
    rec = audit_record(broker, body["decision_id"])
    assert rec["event"] == "error" and rec["details"]["error"] == "policy_error"
    assert rec["details"]["decision"] == {"allow": "yes", "scopes": ["read"], "ttl_seconds": 60}


def test_undefined_decision_is_access_denied_audited_as_policy_error(make_opa: MakeOPA,
                                                                     broker_factory: Factory) -> None:
    broker = broker_factory(make_opa(POLICIES / "undefined").url)
    body = assert_no_token(ask(broker), 403, "access_denied")
    assert "undefined" in body["error_description"]
    rec = audit_record(broker, body["decision_id"])
    assert rec["event"] == "error" and rec["details"]["error"] == "policy_error"


def test_policy_path_with_no_policy_is_access_denied(make_opa: MakeOPA,
                                                     broker_factory: Factory) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, policy_path="jitmesh/nothing/here")
    assert_no_token(ask(broker), 403, "access_denied")


def test_denials_and_errors_are_counted_by_reason_in_metrics(make_opa: MakeOPA,
                                                             broker_factory: Factory) -> None:
    opa = make_opa(POLICIES / "grant")
    broker = broker_factory(opa.url)
    assert ask(broker).status_code == 200
    assert broker.exchange(broker.mint("payments", "api"), "billing").status_code == 403
    opa.stop()
    assert ask(broker).status_code == 503
    text = httpx.get(f"{broker.url}/metrics").text
    assert "jitmesh_tokens_issued_total 1.0" in text
    assert 'jitmesh_token_denials_total{reason="access_denied"} 1.0' in text
    assert 'jitmesh_token_errors_total{reason="opa_unavailable"} 1.0' in text
    assert "jitmesh_opa_request_seconds_count 3.0" in text
    assert "jitmesh_token_request_seconds_count 3.0" in text
