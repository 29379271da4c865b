"""The documented workflow (policies/README.md) with the shipped policy and its example
candidate: shadowed live, then replayed from the candidate directory, same answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jitmesh.devissuer import PodRef
from tests.integration.test_shadow_live import report

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
CANDIDATE_PATH = "jitmesh/candidate/authz/decision"

# (scope, requested ttl, class) for demo/demo-app asking orders-api, per policies/README.md
REQUESTS = [
    ("read write", None, "allow_to_deny"),   # the candidate drops `write`
    ("read", 200, "narrower"),               # cap 300 -> 120 s
    ("read", 100, "agree"),                  # under both caps
]


def test_shipped_candidate_live_and_replayed_agree(opa_server: Any, broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(opa_server.url, shadow_policy_path=CANDIDATE_PATH)
    sa = broker.mint("demo", "demo-app", pod=PodRef("demo-app-1", "uid-demo-1"))
    for scope, ttl, _ in REQUESTS:
        r = broker.exchange(sa, "orders-api", scope=scope, ttl=ttl)
        assert r.status_code == 200, r.text  # shadowing never changes what is issued
    live = report(broker, len(REQUESTS))
    expected = {cls: 0 for cls in live["classes"]}
    for _, _, cls in REQUESTS:
        expected[cls] += 1
    assert live["classes"] == expected

    out = subprocess.run(
        [sys.executable, "-m", "jitmesh.cli", "shadow", "replay", "--candidate", str(POLICIES / "candidate"),
         "--data", str(POLICIES / "data.json"), "--broker-url", broker.url,
         "--admin-token-file", str(broker.admin_token_file), "--since", "10m", "--format", "json"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    replayed = json.loads(out.stdout)
    assert replayed["classes"] == live["classes"]
    assert replayed["matrix"] == live["matrix"]


def test_replay_without_data_uses_the_data_beside_the_candidate(opa_server: Any,
                                                                broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(opa_server.url, shadow_policy_path=CANDIDATE_PATH)
    sa = broker.mint("demo", "demo-app", pod=PodRef("demo-app-1", "uid-demo-1"))
    for scope, ttl, _ in REQUESTS:
        assert broker.exchange(sa, "orders-api", scope=scope, ttl=ttl).status_code == 200
    live = report(broker, len(REQUESTS))
    out = subprocess.run(
        [sys.executable, "-m", "jitmesh.cli", "shadow", "replay", "--candidate", str(POLICIES / "candidate"),
         "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file), "--since", "10m",
         "--format", "json"], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"replaying with {POLICIES / 'data.json'}" in out.stderr
    assert json.loads(out.stdout)["classes"] == live["classes"]


def test_replay_without_any_data_warns(opa_server: Any, broker_factory: Callable[..., Any], tmp_path: Path) -> None:
    broker = broker_factory(opa_server.url)
    candidate = tmp_path / "lonely" / "candidate"
    candidate.mkdir(parents=True)
    (candidate / "authz.rego").write_text((POLICIES / "candidate" / "authz.rego").read_text())
    out = subprocess.run(
        [sys.executable, "-m", "jitmesh.cli", "shadow", "replay", "--candidate", str(candidate),
         "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file), "--since", "10m"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert "WARNING: no --data given" in out.stderr
