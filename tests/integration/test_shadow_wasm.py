"""Shadow mode with the candidate evaluated in the broker as Wasm (`--shadow-policy-dir`):
the same report as the candidate asked of OPA's REST API, for the shipped candidate and for
a candidate that uses the builtins the host provides (sprintf and the time builtins)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jitmesh.devissuer import PodRef
from tests.integration.test_shadow_live import report

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
CANDIDATE_PATH = "jitmesh/candidate/authz/decision"

# (namespace, service account, audience, scope, ttl) sent to both brokers
SHIPPED_REQUESTS = [
    ("demo", "demo-app", "orders-api", "read write", None),
    ("demo", "demo-app", "orders-api", "read", 200),
    ("demo", "demo-app", "orders-api", "read", 100),
    ("orders", "api", "orders-db", "read write", None),
    ("payments", "api", "orders-db", "read", 800),
    ("hr", "payroll-sync", "payroll-api", "read", None),  # the time window: time.weekday, time.clock, sprintf
    ("nobody", "here", "orders-api", "read", None),
]

BUILTIN_CANDIDATE = """package hostshadow.candidate

now := time.parse_rfc3339_ns(input.context.time)

label := sprintf("%s/%s on %s at %v", [input.subject.namespace, input.subject.service_account,
                                        time.weekday(now), time.clock(now)])

leap_second_before_midnight := time.parse_rfc3339_ns("2024-02-29T23:59:59.999999999Z")

decision := {"allow": true, "scopes": ["read"], "ttl_seconds": 300} if {
    input.request.audience == "agree"
    startswith(label, "payments/api on ")
    count(time.clock(now)) == 3
    sprintf("%05d|%q|%v|%v", [42, "x", [1, "a"], 1.5]) == `00042|"x"|[1, "a"]|1.5`
    time.clock(leap_second_before_midnight) == [23, 59, 59]
    time.weekday(leap_second_before_midnight) == "Thursday"
    time.weekday(leap_second_before_midnight + 1) == "Friday"
}

decision := {"allow": false, "reasons": [label]} if input.request.audience == "deny"

decision := {"allow": true, "scopes": ["read"], "ttl_seconds": 10 * count(sprintf("%05d|%q", [42, "x"]))} if {
    input.request.audience == "narrower"
}

decision := {"allow": true, "scopes": ["read"], "ttl_seconds": time.parse_rfc3339_ns("not a time")} if {
    input.request.audience == "error-builtin"
}
"""

BUILTIN_ENFORCED = """package hostshadow.enforced

decision := {"allow": true, "scopes": ["read"], "ttl_seconds": 300}
"""

BUILTIN_CASES = {"agree": "agree", "deny": "allow_to_deny", "narrower": "narrower", "error-builtin": "candidate_error"}


def wait_for_wasm(broker: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while "shadow.wasm_loaded" not in broker.output():
        assert "shadow.wasm_unavailable" not in broker.output(), broker.output()[-2000:]
        assert time.monotonic() < deadline, "the broker did not load the candidate as Wasm"
        time.sleep(0.2)


def same_report(rest: dict[str, Any], wasm: dict[str, Any]) -> None:
    for key in ("comparisons", "classes", "matrix", "top", "agreement_rate", "verdict"):
        assert wasm.get(key) == rest.get(key), key


def test_shipped_candidate_in_process_reports_as_the_rest_query_does(
        opa_server: Any, broker_factory: Callable[..., Any], opa_bin: str) -> None:
    rest = broker_factory(opa_server.url, shadow_policy_path=CANDIDATE_PATH)
    wasm = broker_factory(opa_server.url, shadow_policy_path=CANDIDATE_PATH, shadow_policy_dir=POLICIES,
                          opa_bin=opa_bin)
    wait_for_wasm(wasm)
    for broker in (rest, wasm):
        for ns, sa, audience, scope, ttl in SHIPPED_REQUESTS:
            token = broker.mint(ns, sa, pod=PodRef(f"{sa}-1", f"uid-{ns}-{sa}"))
            broker.exchange(token, audience, scope=scope, ttl=ttl)
    rest_report, wasm_report = report(rest, len(SHIPPED_REQUESTS)), report(wasm, len(SHIPPED_REQUESTS))
    assert rest_report["comparisons"] == len(SHIPPED_REQUESTS)
    assert rest_report["classes"]["candidate_error"] == 0
    same_report(rest_report, wasm_report)


def test_a_candidate_using_sprintf_and_time_in_process_reports_as_the_rest_query_does(
        make_opa: Callable[..., Any], broker_factory: Callable[..., Any], opa_bin: str, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "candidate.rego").write_text(BUILTIN_CANDIDATE)
    (policies / "enforced.rego").write_text(BUILTIN_ENFORCED)
    opa = make_opa(policies)
    flags = {"policy_path": "hostshadow/enforced/decision", "shadow_policy_path": "hostshadow/candidate/decision"}
    rest = broker_factory(opa.url, **flags)
    wasm = broker_factory(opa.url, **flags, shadow_policy_dir=policies, opa_bin=opa_bin)
    wait_for_wasm(wasm)
    for broker in (rest, wasm):
        token = broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"))
        for audience in BUILTIN_CASES:
            assert broker.exchange(token, audience, scope="read").status_code == 200
    rest_report, wasm_report = report(rest, len(BUILTIN_CASES)), report(wasm, len(BUILTIN_CASES))
    expected = dict.fromkeys(rest_report["classes"], 0)
    for cls in BUILTIN_CASES.values():
        expected[cls] += 1
    assert rest_report["classes"] == expected
    same_report(rest_report, wasm_report)
