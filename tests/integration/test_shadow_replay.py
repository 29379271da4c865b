"""`jitmesh shadow replay`: recorded policy inputs re-evaluated on an OPA of its own, against
the candidate of tests/integration/shadow_policies/, compared with live shadowing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.test_shadow_live import (
    CANDIDATE,
    CASES,
    ENFORCED,
    POLICIES,
    TOTAL,
    expected_classes,
    report,
    send_cases,
)


def replay(broker: Any, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "jitmesh.cli", "shadow", "replay", "--broker-url", broker.url,
            "--admin-token-file", str(broker.admin_token_file), "--since", "10m", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


def test_replay_matches_what_live_shadowing_reported(make_opa: Callable[..., Any],
                                                     broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED, shadow_policy_path=CANDIDATE)
    send_cases(broker)
    live = report(broker, TOTAL)
    out = replay(broker, "--candidate", str(POLICIES), "--candidate-path", CANDIDATE, "--format", "json")
    assert out.returncode == 0, out.stderr
    replayed = json.loads(out.stdout)
    assert replayed["source"] == "replay" and replayed["enforced_policy"] == ENFORCED
    for key in ("classes", "matrix", "requests_seen", "comparisons", "agreement_rate", "top", "verdict"):
        assert replayed[key] == live[key], key
    for cls, samples in live["samples"].items():
        assert {s["decision_id"] for s in replayed["samples"][cls]} == {s["decision_id"] for s in samples}, cls
    assert f"replay: done, {TOTAL} records read, {TOTAL} re-evaluated" in out.stderr


def test_replay_of_a_never_deployed_candidate(make_opa: Callable[..., Any], broker_factory: Callable[..., Any],
                                              tmp_path: Path) -> None:
    # the broker's OPA has only the enforced policy; the candidate exists only on disk
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    (deployed / "enforced.rego").write_text((POLICIES / "enforced.rego").read_text())
    broker = broker_factory(make_opa(deployed).url, policy_path=ENFORCED)
    send_cases(broker)
    out = replay(broker, "--candidate", str(POLICIES), "--candidate-path", CANDIDATE, "--format", "json",
                 "--fail-on", "deny_to_allow")
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["classes"] == expected_classes()
    assert doc["samples"]["candidate_error"][0]["candidate_error"]
    assert "--fail-on: 2 deny_to_allow" in out.stderr


def test_replay_window_excludes_older_records(make_opa: Callable[..., Any],
                                              broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED)
    send_cases(broker, {"agree": CASES["agree"]})
    out = replay(broker, "--candidate", str(POLICIES), "--candidate-path", CANDIDATE, "--format", "json",
                 "--until", "2020-01-01T00:00:00Z", "--since", "2019-12-31T00:00:00Z")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["requests_seen"] == 0


def test_replay_refuses_a_candidate_that_cannot_define_the_path(make_opa: Callable[..., Any],
                                                                broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED)
    out = replay(broker, "--candidate", str(POLICIES), "--candidate-path", "jitmesh/candidate/authz/decision")
    assert out.returncode == 2
    assert "--candidate-path 'jitmesh/candidate/authz/decision'" in out.stderr
    assert "shadowtest.candidate" in out.stderr


def test_replay_refuses_a_missing_candidate_directory(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "jitmesh.cli", "shadow", "replay", "--candidate",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no such directory" in out.stderr


def test_replay_reports_a_candidate_that_does_not_compile(make_opa: Callable[..., Any],
                                                          broker_factory: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "c.rego").write_text("package shadowtest.candidate\n\ndecision := {\n")
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED)
    out = replay(broker, "--candidate", str(broken), "--candidate-path", CANDIDATE)
    assert out.returncode == 2
    assert "rego_parse_error" in out.stderr
