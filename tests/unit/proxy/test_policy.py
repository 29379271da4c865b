"""Reading the access decision (docs/contract.md §7): anything but allow == true denies."""

from __future__ import annotations

import pytest

from proxy.policy import AccessDecision, read_decision


def test_allow_true_allows() -> None:
    assert read_decision({"result": {"allow": True, "reasons": []}}) == AccessDecision(True, [])


def test_a_deny_keeps_the_policys_reasons() -> None:
    assert read_decision({"result": {"allow": False, "reasons": ["no"]}}) == AccessDecision(False, ["no"])


def test_a_deny_without_reasons_still_says_why() -> None:
    assert read_decision({"result": {"allow": False}}).reasons == ["denied by the access policy (it gave no reason)"]


@pytest.mark.parametrize("answer", [{}, {"result": None}, {"result": {"allow": "true"}}, {"result": []}, []])
def test_an_undefined_or_malformed_decision_is_a_policy_error_deny(answer: object) -> None:
    decision = read_decision(answer)
    assert (decision.allow, decision.policy_error) == (False, True)
    assert decision.reasons[0].startswith("policy error")
