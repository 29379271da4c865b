"""Shadow classification (pdp/shadow/classify.py): every class, every boundary between them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdp.shadow.classify import DENY, SHADOW_CLASSES, Grant, MalformedDecision, classify, compare, grant_of


def allow(*scopes: str, ttl: int | None = 300) -> Grant:
    return Grant(allow=True, scopes=frozenset(scopes), ttl_seconds=ttl)


# --- grant_of: what a decision document would let the broker issue ----------------------

def test_grant_of_limits_scopes_to_the_requested_ones() -> None:
    g = grant_of({"allow": True, "scopes": ["read", "write", "admin"], "ttl_seconds": 600}, ["read", "write"], None)
    assert g == Grant(True, frozenset({"read", "write"}), 600)


def test_grant_of_limits_ttl_to_the_requested_one() -> None:
    assert grant_of({"allow": True, "scopes": [], "ttl_seconds": 600}, [], 120).ttl_seconds == 120
    assert grant_of({"allow": True, "scopes": [], "ttl_seconds": 60}, [], 120).ttl_seconds == 60


def test_grant_of_without_any_ttl_has_none() -> None:
    assert grant_of({"allow": True}, [], None).ttl_seconds is None
    assert grant_of({"allow": True, "scopes": ["read"]}, [], None).scopes == frozenset()


def test_grant_of_a_denial_is_deny_whatever_the_scopes() -> None:
    assert grant_of({"allow": False, "scopes": ["read"], "ttl_seconds": 60}, ["read"], None) == DENY


def test_grant_of_approval_required_without_allow_is_deny() -> None:
    assert grant_of({"allow": False, "approval_required": True}, [], None) == DENY


@pytest.mark.parametrize("decision", [
    None,
    [],
    "allow",
    {"allow": "true"},
    {"allow": 1},
    {"allow": True, "scopes": "read"},
    {"allow": True, "scopes": [1]},
    {"allow": True, "ttl_seconds": "300"},
    {"allow": True, "ttl_seconds": True},
    {"allow": True, "ttl_seconds": -1},
    {"allow": True, "ttl_seconds": 1.5},
    {"allow": True, "reasons": "because"},
    {"allow": True, "approval_required": "no"},
])
def test_grant_of_rejects_undefined_or_malformed_decisions(decision: object) -> None:
    with pytest.raises(MalformedDecision):
        grant_of(decision, ["read"], None)


def test_grant_of_reads_decisions_as_strictly_as_the_broker() -> None:
    # the broker refuses a decision without `allow` or with a zero TTL as a policy error; so does shadow
    for decision in ({"scopes": ["read"]}, {"allow": True, "ttl_seconds": 0}):
        with pytest.raises(MalformedDecision):
            grant_of(decision, ["read"], None)


# --- classify -------------------------------------------------------------------------

@pytest.mark.parametrize(("enforced", "candidate", "expected"), [
    (allow("read"), allow("read"), "agree"),
    (DENY, DENY, "agree"),
    (allow("read"), DENY, "allow_to_deny"),
    (DENY, allow("read"), "deny_to_allow"),
    (DENY, allow(), "deny_to_allow"),
    (allow("read"), None, "candidate_error"),
    (DENY, None, "candidate_error"),
    # narrower: fewer scopes, shorter TTL, or both
    (allow("read", "write"), allow("read"), "narrower"),
    (allow("read", ttl=300), allow("read", ttl=60), "narrower"),
    (allow("read", "write", ttl=300), allow("read", ttl=60), "narrower"),
    (allow("read", ttl=None), allow("read", ttl=60), "narrower"),
    # wider: more scopes, longer TTL, or both
    (allow("read"), allow("read", "write"), "wider"),
    (allow("read", ttl=60), allow("read", ttl=300), "wider"),
    (allow("read", ttl=60), allow("read", ttl=None), "wider"),
    (allow(ttl=60), allow("read", ttl=600), "wider"),
    # mixed: a potential escalation, so wider
    (allow("read", "write", ttl=60), allow("read", ttl=600), "wider"),
    (allow("read", ttl=600), allow("read", "write", ttl=60), "wider"),
    (allow("read"), allow("write"), "wider"),
])
def test_classify(enforced: Grant, candidate: Grant | None, expected: str) -> None:
    assert classify(enforced, candidate) == expected


def test_classify_two_denials_agree_even_if_their_reasons_differ() -> None:
    e = grant_of({"allow": False, "reasons": ["a"]}, [], None)
    c = grant_of({"allow": False, "reasons": ["b"]}, [], None)
    assert classify(e, c) == "agree"


grants = st.builds(
    Grant,
    allow=st.booleans(),
    scopes=st.frozensets(st.sampled_from(["read", "write", "admin"])),
    ttl_seconds=st.one_of(st.none(), st.integers(min_value=0, max_value=3600)),
)


@given(grants)
def test_a_grant_always_agrees_with_itself(g: Grant) -> None:
    assert classify(g, g) == "agree"


@given(grants, grants)
def test_classify_is_total_and_verdict_consistent(e: Grant, c: Grant) -> None:
    cls = classify(e, c)
    assert cls in SHADOW_CLASSES and cls != "candidate_error"
    if e.allow != c.allow:
        assert cls == ("allow_to_deny" if e.allow else "deny_to_allow")
    else:
        assert cls in ("agree", "narrower", "wider")


@given(grants, grants)
def test_narrower_and_wider_are_mirror_images_unless_mixed(e: Grant, c: Grant) -> None:
    forward, backward = classify(e, c), classify(c, e)
    if forward == "narrower":
        assert backward == "wider"
    if forward == "wider" and backward == "wider":
        # both ways wider only for a mixed change: neither grant contains the other
        def ttl(g: Grant) -> float:
            return float("inf") if g.ttl_seconds is None else g.ttl_seconds

        assert not (c.scopes <= e.scopes and ttl(c) <= ttl(e))
        assert not (e.scopes <= c.scopes and ttl(e) <= ttl(c))


# --- compare: the whole comparison from a policy input and two raw decisions ----------

def policy_input(scopes: list[str] | None = None, ttl: int | None = None) -> dict[str, Any]:
    return {
        "subject": {"sub": "system:serviceaccount:payments:api", "namespace": "payments",
                    "service_account": "api", "pod": None, "issuer": "https://k"},
        "request": {"audience": "orders-db", "scopes": scopes or [], "ttl_seconds": ttl},
        "context": {"time": "2026-11-22T10:00:00Z", "client_ip": "127.0.0.1"},
        "approval": None,
    }


def test_compare_records_subject_audience_and_both_verdicts() -> None:
    c = compare(decision_id="d1", time=1.0, policy_input=policy_input(["read"]),
                enforced_decision={"allow": False, "reasons": ["no"]},
                candidate_decision={"allow": True, "scopes": ["read"], "ttl_seconds": 60})
    assert (c.decision_id, c.subject, c.audience) == ("d1", "system:serviceaccount:payments:api", "orders-db")
    assert (c.shadow_class, c.enforced, c.candidate) == ("deny_to_allow", "deny", "allow")
    assert c.candidate_error is None


def test_compare_undefined_candidate_is_candidate_error_with_the_reason() -> None:
    c = compare(decision_id="d", time=0, policy_input=policy_input(), enforced_decision={"allow": True},
                candidate_decision=None)
    assert (c.shadow_class, c.candidate) == ("candidate_error", "error")
    assert c.candidate_error == "decision is undefined"


def test_compare_candidate_query_failure_wins_over_a_decision() -> None:
    c = compare(decision_id="d", time=0, policy_input=policy_input(), enforced_decision={"allow": True},
                candidate_decision={"allow": True}, candidate_error="timed out after 1.0s")
    assert c.shadow_class == "candidate_error" and c.candidate_error == "timed out after 1.0s"


def test_compare_malformed_enforced_decision_counts_as_deny() -> None:
    c = compare(decision_id="d", time=0, policy_input=policy_input(["read"]), enforced_decision={"allow": "yes"},
                candidate_decision={"allow": True, "scopes": ["read"]})
    assert (c.enforced, c.shadow_class) == ("deny", "deny_to_allow")


def test_compare_scopes_beyond_the_request_do_not_make_a_candidate_wider() -> None:
    c = compare(decision_id="d", time=0, policy_input=policy_input(["read"], ttl=300),
                enforced_decision={"allow": True, "scopes": ["read"], "ttl_seconds": 300},
                candidate_decision={"allow": True, "scopes": ["read", "admin"], "ttl_seconds": 900})
    assert c.shadow_class == "agree"


# --- dry-run: what a denial becomes -------------------------------------------------------

def test_dry_run_issues_the_requested_scopes_and_keeps_the_policys_reasons() -> None:
    from pdp.decision import Decision
    from pdp.enforcement import dry_run_decision

    d = dry_run_decision(Decision(allow=False, scopes=("read",), ttl_seconds=5, reasons=("no grant",)),
                         ["read", "write"])
    assert d == Decision(allow=True, scopes=("read", "write"), ttl_seconds=None, reasons=("no grant",))
