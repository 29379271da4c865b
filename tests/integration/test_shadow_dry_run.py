"""`jitmesh broker --enforcement dry-run` with a real OPA: a policy denial is issued anyway,
audited as `dry_run_allowed` and counted; who is asking is still checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.contract import DRY_RUN_CLAIM
from jitmesh.devissuer import DevIssuer, PodRef
from tests.integration.test_shadow_live import CANDIDATE, ENFORCED, POLICIES


@pytest.fixture
def dry_run_broker(make_opa: Callable[..., Any], broker_factory: Callable[..., Any]) -> Any:
    return broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED, enforcement="dry-run")


def audit(broker: Any, event: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": event}, headers=broker.admin_headers())
    assert r.status_code == 200, r.text
    records: list[dict[str, Any]] = r.json()["records"]
    return records


def test_a_policy_denial_is_issued_as_requested(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    r = dry_run_broker.exchange(sa, "deny-both", scope="read write")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "read write"
    assert r.json()["expires_in"] == 300  # the broker's --default-ttl


def test_a_dry_run_token_carries_the_dry_run_claim(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    token = dry_run_broker.exchange(sa, "deny-both", scope="read").json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})[DRY_RUN_CLAIM] is True


def test_a_token_the_policy_allowed_has_no_dry_run_claim(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    token = dry_run_broker.exchange(sa, "narrower", scope="read").json()["access_token"]
    assert DRY_RUN_CLAIM not in jwt.decode(token, options={"verify_signature": False})


def test_dry_run_warns_at_start_and_on_each_dry_run_issuance(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    decision_id = dry_run_broker.exchange(sa, "deny-both", scope="read").json()["decision_id"]
    lines = [json.loads(line) for line in dry_run_broker.output().splitlines() if line.startswith("{")]
    assert any(ln["event"] == "broker.dry_run" and ln["level"] == "warning" for ln in lines)
    assert any(ln["event"] == "token.issued_in_dry_run" and ln["level"] == "warning"
               and ln.get("decision_id") == decision_id for ln in lines)


def test_a_dry_run_issuance_is_audited_with_the_policys_reasons(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    decision_id = dry_run_broker.exchange(sa, "deny-both", scope="read").json()["decision_id"]
    [rec] = audit(dry_run_broker, "dry_run_allowed")
    assert rec["decision_id"] == decision_id
    assert rec["details"]["reasons"] == ["enforced: no grant for this audience"]
    assert rec["details"]["decision"]["allow"] is False
    assert rec["details"]["granted_scopes"] == ["read"]
    assert audit(dry_run_broker, "issued") == [] and audit(dry_run_broker, "denied") == []


def test_dry_run_issuances_are_counted(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    for audience in ("deny-both", "deny-both", "agree"):
        assert dry_run_broker.exchange(sa, audience, scope="read").status_code == 200
    text = httpx.get(f"{dry_run_broker.url}/metrics").text
    assert "jitmesh_dry_run_allowed_total 2.0" in text
    assert "jitmesh_tokens_issued_total 3.0" in text


def test_an_allowed_request_is_issued_as_the_policy_says(dry_run_broker: Any) -> None:
    sa = dry_run_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    r = dry_run_broker.exchange(sa, "narrower", scope="read write admin")
    assert r.status_code == 200 and r.json()["scope"] == "read write"
    assert [rec["event"] for rec in audit(dry_run_broker, "issued")] == ["issued"]


def test_a_subject_token_that_fails_attestation_is_still_refused(dry_run_broker: Any) -> None:
    stranger = DevIssuer(issuer=dry_run_broker.issuer.issuer)  # same issuer URL, a key the broker does not trust
    r = dry_run_broker.exchange(stranger.mint("payments", "api"), "deny-both", scope="read")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert audit(dry_run_broker, "dry_run_allowed") == []


def test_a_policy_error_is_still_refused(make_opa: Callable[..., Any], broker_factory: Callable[..., Any]) -> None:
    # the candidate of the shadow tests leaves the decision undefined for this audience
    broker = broker_factory(make_opa(POLICIES).url, policy_path=CANDIDATE, enforcement="dry-run")
    sa = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    r = broker.exchange(sa, "error-undefined", scope="read")
    assert r.status_code == 403 and "policy error" in r.json()["error_description"]
    assert audit(broker, "dry_run_allowed") == []


def test_enforce_is_the_default_and_denies(make_opa: Callable[..., Any], broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED)
    sa = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    assert broker.exchange(sa, "deny-both", scope="read").status_code == 403
