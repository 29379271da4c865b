"""A real broker process, a real OPA on a small test policy: what a successful exchange
returns, claim by claim, and how scopes and lifetimes are bounded."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import DevIssuer, PodRef
from jitmesh.procs import ManagedProcess, free_port, wait_http
from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"
POD = PodRef("api-7d9c", "5d1e0000-0000-4000-8000-000000000001")


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES / "grant").url, max_ttl=100)


def verify(broker: BrokerHandle, token: str, audience: str = "orders-db") -> dict[str, Any]:
    jwks = jwt.PyJWKSet.from_dict(httpx.get(f"{broker.url}/jwks").json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=broker.url)


def test_successful_exchange_returns_an_rfc8693_response_with_no_store(broker: BrokerHandle) -> None:
    r = broker.exchange(broker.mint("payments", "api", pod=POD), "orders-db", scope="read")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope", "decision_id"}
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"


def test_issued_token_carries_every_claim_of_the_contract_and_verifies_against_jwks(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api", pod=POD), "orders-db", scope="read write", ttl=60).json()
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt" and header["kid"]
    claims = verify(broker, body["access_token"])
    assert claims["iss"] == broker.url
    assert claims["sub"] == "system:serviceaccount:payments:api"
    assert claims["client_id"] == claims["sub"]
    assert claims["aud"] == "orders-db"
    assert claims["scope"] == "read write"
    assert claims["exp"] - claims["iat"] == 60 == body["expires_in"]
    assert claims["nbf"] == claims["iat"]
    assert claims["decision_id"] == body["decision_id"]
    assert claims["kubernetes.io"] == {"namespace": "payments", "serviceaccount": {"name": "api"},
                                       "pod": {"name": POD.name, "uid": POD.uid}}
    assert claims["jti"]


def test_token_not_bound_to_a_pod_has_no_pod_claim(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    assert "pod" not in verify(broker, body["access_token"])["kubernetes.io"]


def test_every_issued_token_has_a_unique_jti(broker: BrokerHandle) -> None:
    sa = broker.mint("payments", "api", pod=POD)
    jtis = {verify(broker, broker.exchange(sa, "orders-db", scope="read").json()["access_token"])["jti"]
            for _ in range(5)}
    assert len(jtis) == 5


def test_granted_scopes_are_never_wider_than_requested(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    assert body["scope"] == "read"
    assert verify(broker, body["access_token"])["scope"] == "read"


def test_scopes_the_policy_does_not_grant_are_dropped(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read admin").json()
    assert body["scope"] == "read"


def test_lifetime_is_capped_by_the_policy_ttl(make_opa: Callable[..., Any],
                                               broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, max_ttl=3600)
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read", ttl=3000).json()
    assert body["expires_in"] == 120  # the test policy's ttl_seconds


def test_lifetime_is_capped_by_max_ttl(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read", ttl=3000).json()
    assert body["expires_in"] == 100


def test_lifetime_without_a_request_is_the_default_ttl(make_opa: Callable[..., Any],
                                                        broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, default_ttl=45)
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    assert body["expires_in"] == 45


def test_policy_deny_is_403_access_denied_with_the_policy_reasons(broker: BrokerHandle) -> None:
    r = broker.exchange(broker.mint("payments", "api"), "billing", scope="read")
    assert r.status_code == 403
    assert r.json()["error"] == "access_denied"
    assert r.json()["error_description"] == "no grant for this subject and audience"
    assert r.json()["decision_id"]


def test_approval_required_is_authorization_pending_with_request_id_and_interval(broker: BrokerHandle) -> None:
    r = broker.exchange(broker.mint("payments", "api"), "needs-approval")
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "authorization_pending"
    assert body["access_request_id"] and body["interval"] > 0 and "access_token" not in body


def test_pending_approval_is_audited_with_its_access_request_id(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "needs-approval").json()
    r = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": "pending", "limit": 1000},
                  headers=broker.admin_headers())
    rec = next(x for x in r.json()["records"] if x["decision_id"] == body["decision_id"])
    assert rec["details"]["access_request_id"] == body["access_request_id"]
    assert rec["details"]["reasons"] == ["needs a human"]


def test_jwks_url_attestation_verifies_against_the_served_keys(make_opa: Callable[..., Any],
                                                               broker_factory: Callable[..., BrokerHandle],
                                                               tmp_path: Path) -> None:
    cluster = DevIssuer()
    served = tmp_path / "served"
    cluster.write_jwks(served / "openid" / "v1" / "jwks")
    port = free_port()
    server = ManagedProcess("jwks", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                     "--directory", str(served)], tmp_path / "jwks-server.log")
    with server:
        url = f"http://127.0.0.1:{port}/openid/v1/jwks"
        wait_http(url, timeout=20, proc=server.proc)
        broker = broker_factory(make_opa(POLICIES / "grant").url, issuer=cluster, jwks_url=url)
        assert broker.exchange(cluster.mint("payments", "api"), "orders-db", scope="read").status_code == 200
        r = broker.exchange(DevIssuer(cluster.issuer).mint("payments", "api"), "orders-db", scope="read")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_a_subject_token_older_than_a_day_is_invalid_grant_by_default(broker: BrokerHandle) -> None:
    old = broker.mint("payments", "api", pod=POD, now=time.time() - 2 * 86400, ttl=7 * 86400)
    r = broker.exchange(old, "orders-db", scope="read")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert "--max-subject-token-age (86400 s)" in r.json()["error_description"]


def test_max_subject_token_age_zero_accepts_an_old_subject_token(make_opa: Callable[..., Any],
                                                                broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, max_subject_token_age=0)
    old = broker.mint("payments", "api", pod=POD, now=time.time() - 2 * 86400, ttl=7 * 86400)
    assert broker.exchange(old, "orders-db", scope="read").status_code == 200
