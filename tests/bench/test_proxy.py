"""The proxy section's pure parts: reading vegeta's report."""

from __future__ import annotations

from bench.proxy_section import latency_ms


def test_vegeta_latencies_are_read_in_milliseconds() -> None:
    report = {"latencies": {"50th": 450_000, "99th": 2_100_000}, "success": 0.999}
    assert latency_ms(report) == {"p50": 0.45, "p99": 2.1, "success": 0.999}


def test_a_report_without_latencies_reads_as_zero() -> None:
    assert latency_ms({}) == {"p50": 0.0, "p99": 0.0, "success": 0.0}


def test_the_time_a_proxy_applied_a_revocation_is_read_from_its_log() -> None:
    from bench.proxy_section import applied_at

    log = "\n".join([
        "not json",
        '{"ts":"2026-12-07T02:00:00.000Z","event":"events.applied","action":"revoked","kind":"jti"}',
        '{"ts":"2026-12-07T02:00:01.250Z","event":"events.applied","action":"revoked","kind":"subject"}',
    ])
    assert applied_at(log, "subject") == 1796608801.25
    assert applied_at(log, "pod_uid") is None


def test_dpop_targets_carry_the_bound_token_and_a_distinct_valid_proof_each() -> None:
    import time

    from bench import proxy_section
    from jitmesh import dpop

    key = dpop.new_key()
    url = "http://127.0.0.1:9000/orders/1"
    targets = proxy_section.dpop_targets(key, url, "tok", 3).split("\n\n")
    assert len(targets) == 3
    jtis = set()
    for target in targets:
        lines = target.strip().split("\n")
        assert lines[:2] == [f"GET {url}", "Authorization: DPoP tok"]
        proof = lines[2].removeprefix("DPoP: ")
        checked = dpop.check_proof(proof, htm="GET", htu=url, now=time.time(), window=60, access_token="tok",
                                   jkt=dpop.thumbprint(dpop.public_jwk(key)))
        jtis.add(checked.jti)
    assert len(jtis) == 3
