"""Live shadowing in a real broker with a real OPA: the enforced and candidate policies
of tests/integration/shadow_policies/ differ in one known way per audience."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef

POLICIES = Path(__file__).parent / "shadow_policies"
ENFORCED = "shadowtest/enforced/decision"
CANDIDATE = "shadowtest/candidate/decision"
SLOW_SECONDS = 3.0

# audience -> (requests to send, class expected, what the enforced policy issues: scope or None for 403)
CASES: dict[str, tuple[int, str, str | None]] = {
    "agree": (3, "agree", "read"),
    "deny-both": (2, "agree", None),
    "allow-to-deny": (2, "allow_to_deny", "read"),
    "deny-to-allow": (2, "deny_to_allow", None),
    "narrower": (1, "narrower", "read write"),
    "wider": (1, "wider", "read"),
    "error-undefined": (1, "candidate_error", "read"),
    "error-builtin": (1, "candidate_error", "read"),
}
TOTAL = sum(n for n, _, _ in CASES.values())


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(SLOW_SECONDS)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    server.shutdown()
    server.server_close()


@pytest.fixture
def shadow_broker(make_opa: Callable[..., Any], broker_factory: Callable[..., Any], slow_server: str,
                  tmp_path: Path) -> Any:
    data = tmp_path / "slow.json"
    data.write_text(json.dumps({"shadowtest": {"slow_url": slow_server}}))
    opa = make_opa(POLICIES, data)
    return broker_factory(opa.url, policy_path=ENFORCED, shadow_policy_path=CANDIDATE)


def send_cases(broker: Any, cases: dict[str, tuple[int, str, str | None]] = CASES) -> dict[str, list[httpx.Response]]:
    sa = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    return {aud: [broker.exchange(sa, aud, scope="read write") for _ in range(n)] for aud, (n, _, _) in cases.items()}


def report(broker: Any, expected_comparisons: int, timeout: float = 10.0) -> dict[str, Any]:
    """The broker's report once `expected_comparisons` are in (candidates finish after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{broker.url}/v1/admin/shadow/report", headers=broker.admin_headers(), timeout=10.0)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        if doc["comparisons"] >= expected_comparisons or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def expected_classes(cases: dict[str, tuple[int, str, str | None]] = CASES) -> dict[str, int]:
    out = dict.fromkeys(("agree", "allow_to_deny", "deny_to_allow", "narrower", "wider", "candidate_error"), 0)
    for n, cls, _ in cases.values():
        out[cls] += n
    return out


def test_each_class_is_counted_exactly(shadow_broker: Any) -> None:
    send_cases(shadow_broker)
    doc = report(shadow_broker, TOTAL)
    assert doc["classes"] == expected_classes()
    assert doc["requests_seen"] == doc["comparisons"] == TOTAL == 13
    assert doc["matrix"] == {"allow": {"allow": 5, "deny": 2, "error": 2},
                             "deny": {"allow": 2, "deny": 2, "error": 0}}
    assert doc["candidate_policy"] == CANDIDATE and doc["enforced_policy"] == ENFORCED
    assert doc["verdict"]["status"] == "findings"


def test_issuance_is_what_the_enforced_policy_decides(shadow_broker: Any) -> None:
    responses = send_cases(shadow_broker)
    for audience, (_, _, scope) in CASES.items():
        for r in responses[audience]:
            if scope is None:
                assert r.status_code == 403, (audience, r.text)
                assert "enforced: no grant" in r.json()["error_description"]
            else:
                assert r.status_code == 200, (audience, r.text)
                assert r.json()["scope"] == scope
                assert r.json()["expires_in"] == (60 if audience == "wider" else 300)


def test_samples_name_the_decisions_and_top_lists_the_audiences(shadow_broker: Any) -> None:
    responses = send_cases(shadow_broker)
    doc = report(shadow_broker, TOTAL)
    denied_ids = {r.json()["decision_id"] for r in responses["deny-to-allow"]}
    assert {s["decision_id"] for s in doc["samples"]["deny_to_allow"]} == denied_ids
    assert doc["top"]["deny_to_allow"]["audiences"] == [{"name": "deny-to-allow", "count": 2}]
    assert doc["top"]["deny_to_allow"]["subjects"] == [{"name": "system:serviceaccount:payments:api", "count": 2}]
    errors = {s["audience"]: s["candidate_error"] for s in doc["samples"]["candidate_error"]}
    assert errors["error-undefined"] == "decision is undefined"
    assert "eval_builtin_error" in errors["error-builtin"]


def test_comparisons_are_counted_in_prometheus_by_class(shadow_broker: Any) -> None:
    send_cases(shadow_broker)
    report(shadow_broker, TOTAL)
    text = httpx.get(f"{shadow_broker.url}/metrics").text
    for cls, n in expected_classes().items():
        assert f'jitmesh_shadow_comparisons_total{{class="{cls}"}} {float(n)}' in text


def test_slow_candidate_does_not_delay_issuance(shadow_broker: Any) -> None:
    sa = shadow_broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    shadow_broker.exchange(sa, "agree", scope="read")  # warm up connections

    def timed(audience: str) -> float:
        started = time.perf_counter()
        r = shadow_broker.exchange(sa, audience, scope="read")
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "read"
        return time.perf_counter() - started

    fast = [timed("agree") for _ in range(5)]
    slow = [timed("slow") for _ in range(5)]
    # the candidate takes SLOW_SECONDS for "slow"; issuance must not wait for it at all
    # waiting for the candidate would show as >= 1 s (its timeout); allow for a loaded machine well below that
    assert max(slow) < 0.8, slow
    assert statistics.median(slow) < statistics.median(fast) + 0.1, (fast, slow)
    doc = report(shadow_broker, 11, timeout=5.0)  # after the candidate's 1 s timeout
    assert doc["classes"]["candidate_error"] == 5
    assert doc["classes"]["agree"] == 6
    assert {s["candidate_error"] for s in doc["samples"]["candidate_error"]} == {
        "the candidate did not answer within 1s"}


def test_broker_without_shadow_reports_no_data(make_opa: Callable[..., Any],
                                               broker_factory: Callable[..., Any]) -> None:
    broker = broker_factory(make_opa(POLICIES).url, policy_path=ENFORCED)
    sa = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    assert broker.exchange(sa, "agree", scope="read").status_code == 200
    doc = report(broker, 0)
    assert doc["comparisons"] == 0 and doc["candidate_policy"] is None
    assert doc["verdict"]["status"] == "no_data"
    assert "jitmesh_shadow_comparisons_total" not in httpx.get(f"{broker.url}/metrics").text


def shadow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jitmesh.cli", "shadow", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_report_command_renders_and_gates_on_fail_on(shadow_broker: Any) -> None:
    send_cases(shadow_broker)
    report(shadow_broker, TOTAL)
    common = ["report", "--broker-url", shadow_broker.url, "--admin-token-file", str(shadow_broker.admin_token_file),
              "--since", "10m"]
    gated = shadow_cli(*common, "--format", "json", "--fail-on", "deny_to_allow,candidate_error")
    assert gated.returncode == 1, gated.stderr
    assert "2 deny_to_allow, 2 candidate_error" in gated.stderr
    assert json.loads(gated.stdout)["classes"] == expected_classes()

    table = shadow_cli(*common, "--fail-on", "wider,narrower")
    assert table.returncode == 1
    assert table.stdout.rstrip().splitlines()[-1].startswith("VERDICT: DO NOT PROMOTE")

    markdown = shadow_cli(*common, "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    assert "| `deny_to_allow` | 2 |" in markdown.stdout


def test_report_command_without_admin_token_is_refused(shadow_broker: Any) -> None:
    out = shadow_cli("report", "--broker-url", shadow_broker.url)
    assert out.returncode == 3
    assert "admin token is required" in out.stderr


def test_request_without_an_enforced_decision_is_seen_but_not_compared(make_opa: Callable[..., Any],
                                                                       broker_factory: Callable[..., Any]) -> None:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url, policy_path=ENFORCED, shadow_policy_path=CANDIDATE)
    sa = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
    opa.stop()
    r = broker.exchange(sa, "agree", scope="read")
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
    doc = report(broker, 0)
    assert (doc["requests_seen"], doc["comparisons"]) == (1, 0)
