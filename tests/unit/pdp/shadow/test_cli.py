"""`jitmesh shadow report|replay` argument errors (before any network or OPA), and how
replay reads audit records."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitmesh.cli import main
from pdp.shadow.replay import ReplayError, check_candidate, recorded_decision

POLICIES = Path(__file__).resolve().parents[3] / "integration" / "shadow_policies"
UNREACHABLE = "http://127.0.0.1:9"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["shadow", *argv], environ={})
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--since", "yesterday"], "--since 'yesterday': expected a duration such as 90s, 15m"),
    (["--since", "0s"], "--since '0s': the duration must be longer than zero"),
    (["--since", "2999-01-01T00:00:00Z"], "is in the future"),
    (["--until", "soon"], "--until 'soon': expected a duration such as 90s, 15m, 2h, 7d or 1h30m (back from now), "
                          "or an RFC 3339 time"),
    (["--since", "2h", "--until", "2020-01-01T00:00:00Z"], "--until '2020-01-01T00:00:00Z' is not after --since"),
    (["--format", "yaml"], "--format 'yaml': expected one of table, json, markdown"),
    (["--fail-on", "deny_to_allow,oops"], "--fail-on: unknown class 'oops'"),
    (["--fail-on", ","], "--fail-on ',': name at least one class"),
    (["--admin-token-file", "/nonexistent/admin"], "--admin-token-file '/nonexistent/admin': cannot read it"),
])
def test_report_rejects_bad_arguments_naming_them(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                  message: str) -> None:
    code, err = run(capsys, "report", "--broker-url", UNREACHABLE, *argv)
    assert code == 2
    assert message in err


def test_report_with_an_empty_admin_token_file_is_refused(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    empty = tmp_path / "admin"
    empty.write_text("# nothing here\n\n")
    code, err = run(capsys, "report", "--broker-url", UNREACHABLE, "--admin-token-file", str(empty))
    assert code == 2 and "holds no token" in err


def test_report_with_an_unreachable_broker_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "report", "--broker-url", UNREACHABLE)
    assert code == 3
    assert f"cannot reach the broker at {UNREACHABLE}" in err


def test_replay_rejects_bad_arguments_before_starting_opa(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "replay", "--candidate", str(POLICIES), "--format", "csv")
    assert code == 2 and "--format 'csv'" in err
    code, err = run(capsys, "replay", "--candidate", str(POLICIES), "--candidate-path", "shadowtest/candidate/decision",
                    "--data", "/nonexistent/data.json")
    assert code == 2 and "--data '/nonexistent/data.json': no such file" in err


def test_check_candidate_accepts_a_package_that_can_define_the_path() -> None:
    check_candidate(POLICIES, "shadowtest/candidate/decision")
    check_candidate(POLICIES, "/shadowtest/candidate/decision/")
    with pytest.raises(ReplayError, match="no policy in"):
        check_candidate(POLICIES, "shadowtest/candidates/decision")


def test_check_candidate_rejects_a_directory_without_rego(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(ReplayError, match=r"no \.rego policy files"):
        check_candidate(tmp_path, "x/decision")


def record(event: str, details: dict[str, object]) -> dict[str, object]:
    return {"decision_id": "d1", "time": 5.0, "event": event, "subject": "sa", "audience": "db",
            "policy_path": "jitmesh/authz/decision", "details": details}


INPUT = {"subject": {"sub": "sa"}, "request": {"audience": "db", "scopes": []}}


def test_recorded_decision_of_an_issued_record() -> None:
    rec = recorded_decision(record("issued", {"input": INPUT, "decision": {"allow": True}}))
    assert rec is not None
    assert (rec.decision_id, rec.time, rec.policy_input, rec.enforced_decision, rec.compared) == (
        "d1", 5.0, INPUT, {"allow": True}, True)


def test_recorded_decision_of_a_policy_error_is_compared_as_a_deny() -> None:
    rec = recorded_decision(record("error", {"input": INPUT, "error": "policy_error"}))
    assert rec is not None and rec.compared and rec.enforced_decision is None


def test_recorded_decision_when_opa_was_unreachable_is_not_compared() -> None:
    rec = recorded_decision(record("error", {"input": INPUT, "error": "temporarily_unavailable"}))
    assert rec is not None and not rec.compared


@pytest.mark.parametrize("details", [{}, {"error": "invalid_grant"}, {"input": "not an object"}])
def test_records_without_a_policy_input_are_not_decisions(details: dict[str, object]) -> None:
    assert recorded_decision(record("denied", details)) is None
