"""The policy contract as pure functions: the input sent to OPA, strict decision reading,
and what is granted."""

from __future__ import annotations

from typing import Any

import pytest

from pdp.attestation.identity import PodInfo, Subject
from pdp.decision import Decision, MalformedDecision, grant, parse_decision, policy_input

SUBJECT = Subject(sub="system:serviceaccount:payments:api", issuer="https://kubernetes.default.svc",
                  namespace="payments", service_account="api")
NOW = 1795334400.7  # 2026-11-22T08:00:00Z


def test_policy_input_has_exactly_the_contract_shape() -> None:
    pod = PodInfo(name="api-7d9c", uid="5d1e", labels={"app": "api"}, images=("img@sha256:ab",))
    doc = policy_input(Subject(**{**SUBJECT.__dict__, "pod": pod}), "orders-db", ["read"], 300, NOW, "10.0.0.7")
    assert doc == {
        "subject": {"sub": "system:serviceaccount:payments:api", "issuer": "https://kubernetes.default.svc",
                    "namespace": "payments", "service_account": "api",
                    "pod": {"name": "api-7d9c", "uid": "5d1e", "labels": {"app": "api"}, "images": ["img@sha256:ab"]}},
        "request": {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": 300, "dpop": None},
        "context": {"time": "2026-11-22T08:00:00Z", "client_ip": "10.0.0.7"},
        "approval": None,
    }


def test_policy_input_pod_is_null_when_the_token_is_not_pod_bound() -> None:
    assert policy_input(SUBJECT, "a", [], None, NOW, None)["subject"]["pod"] is None


def test_policy_input_scopes_empty_and_ttl_null_when_none_asked() -> None:
    assert policy_input(SUBJECT, "a", [], None, NOW, None)["request"] == {"audience": "a", "scopes": [],
                                                                         "ttl_seconds": None, "dpop": None}


def test_policy_input_request_dpop_names_the_proof_key() -> None:
    assert policy_input(SUBJECT, "a", [], None, NOW, None, dpop_jkt="k1")["request"]["dpop"] == {"jkt": "k1"}


def test_decision_require_dpop_is_read() -> None:
    assert parse_decision({"result": {"allow": True, "require_dpop": True}}).require_dpop
    assert not parse_decision({"result": {"allow": True}}).require_dpop


def test_decision_require_dpop_that_is_no_bool_is_malformed() -> None:
    with pytest.raises(MalformedDecision, match="require_dpop"):
        parse_decision({"result": {"allow": True, "require_dpop": "yes"}})


def test_full_decision_is_read() -> None:
    d = parse_decision({"result": {"allow": True, "scopes": ["read"], "ttl_seconds": 60, "reasons": ["ok"],
                                   "approval_required": False}})
    assert d == Decision(allow=True, scopes=("read",), ttl_seconds=60, reasons=("ok",), approval_required=False)


def test_absent_optional_fields_take_empty_values() -> None:
    assert parse_decision({"result": {"allow": False}}) == Decision(allow=False)


@pytest.mark.parametrize("response", [{}, {"result": None}, {"result": "allow"}, {"result": []}, None, []])
def test_undefined_or_non_object_decision_is_malformed(response: Any) -> None:
    with pytest.raises(MalformedDecision):
        parse_decision(response)


@pytest.mark.parametrize("doc", [
    {"allow": "yes"}, {"allow": 1}, {"allow": None}, {},
    {"allow": True, "scopes": "read"}, {"allow": True, "scopes": [1]}, {"allow": True, "scopes": None},
    {"allow": True, "ttl_seconds": 0}, {"allow": True, "ttl_seconds": -5}, {"allow": True, "ttl_seconds": 1.5},
    {"allow": True, "ttl_seconds": "60"}, {"allow": True, "ttl_seconds": True},
    {"allow": True, "reasons": "bad"}, {"allow": False, "reasons": [None]},
    {"allow": True, "approval_required": "no"},
])
def test_decision_outside_the_contract_is_malformed(doc: dict[str, Any]) -> None:
    with pytest.raises(MalformedDecision):
        parse_decision({"result": doc})


def test_granted_scopes_are_the_policy_scopes_within_the_requested() -> None:
    d = Decision(allow=True, scopes=("read", "write", "admin"))
    assert grant(d, ["write", "read", "delete"], None, 300, 3600).scopes == ("write", "read")


def test_no_scopes_are_granted_when_none_were_requested() -> None:
    assert grant(Decision(allow=True, scopes=("read",)), [], None, 300, 3600).scopes == ()


def test_no_scopes_are_granted_when_the_policy_names_none() -> None:
    assert grant(Decision(allow=True), ["read"], None, 300, 3600).scopes == ()


@pytest.mark.parametrize(("requested", "policy", "default", "maximum", "expected"), [
    (None, None, 300, 3600, 300),
    (60, None, 300, 3600, 60),
    (7200, None, 300, 3600, 3600),
    (600, 120, 300, 3600, 120),
    (None, 120, 300, 3600, 120),
    (30, 120, 300, 3600, 30),
    (None, 9000, 300, 100, 100),
])
def test_lifetime_is_the_shortest_of_requested_policy_and_max(requested: int | None, policy: int | None,
                                                              default: int, maximum: int, expected: int) -> None:
    d = Decision(allow=True, ttl_seconds=policy)
    assert grant(d, [], requested, default, maximum).ttl == expected


@pytest.mark.parametrize("error", ["invalid_target", "invalid_scope"])
def test_a_denial_may_name_its_oauth_error(error: str) -> None:
    d = parse_decision({"result": {"allow": False, "reasons": ["r"], "error": error}})
    assert d.error == error


def test_an_unknown_decision_error_is_malformed() -> None:
    with pytest.raises(MalformedDecision, match=r"decision\.error"):
        parse_decision({"result": {"allow": False, "error": "server_error"}})


def test_an_allow_ignores_an_error_field() -> None:
    assert parse_decision({"result": {"allow": True, "error": "invalid_scope"}}).error is None
