"""The open-loop section's pure parts: vegeta's CSV results, percentiles up to p99.9, the target format."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.latency_section import figures_of
from bench.openloop import RunSummary, Target, parse_results_csv, summarize


def row(code: int, latency_ms: float, error: str = "") -> str:
    return f'1796617372195970606,{code},{int(latency_ms * 1e6)},0,501,"{error}",Ym9keQ==,,0,GET,http://x/,'


def test_latencies_are_read_in_milliseconds_and_only_error_free_2xx_count_as_ok() -> None:
    text = "\n".join([row(200, 1.5), row(503, 0.25), row(0, 5000, "Get http://x/: timeout, giving up"),
                      row(200, 2.0, "read: connection reset")]) + "\n"
    latencies, ok = parse_results_csv(text)
    assert latencies == [1.5, 0.25, 5000.0, 2.0]
    assert ok == 1


def test_lines_that_are_not_results_are_skipped() -> None:
    assert parse_results_csv("\nnot,a,result\n" + row(200, 1.0)) == ([1.0], 1)


def test_p999_is_a_latency_a_request_really_had() -> None:
    latencies = [1.0] * 998 + [50.0, 900.0]
    s = summarize(latencies, ok=1000, offered_rate=100, seconds=10)
    assert (s.p50_ms, s.p99_ms, s.p999_ms) == (1.0, 1.0, 50.0)
    assert s.ok_per_second == 100


def test_a_run_that_recorded_nothing_is_an_error_not_a_zero() -> None:
    with pytest.raises(RuntimeError, match="no request"):
        summarize([], ok=0, offered_rate=100, seconds=10)


def test_a_target_with_a_body_names_its_file_as_vegeta_reads_it(tmp_path: Path) -> None:
    t = Target("issuance", "POST", "http://127.0.0.1:1/token", ("Content-Type: text/plain",), tmp_path / "b")
    assert t.text() == f"POST http://127.0.0.1:1/token\nContent-Type: text/plain\n@{tmp_path / 'b'}\n"
    assert Target("proxy", "GET", "http://x/").text() == "GET http://x/\n"


def test_each_fixed_rate_gives_p50_p99_and_p999_and_says_when_answers_failed() -> None:
    cap = RunSummary(0, 10, 10_000, 10_000, 20, 40, 60)
    half = RunSummary(500, 10, 5_000, 5_000, 1.0, 3.0, 9.0)
    busy = RunSummary(900, 10, 9_000, 8_000, 2.0, 30.0, 90.0)
    figures = figures_of("issuance", {"capacity": cap, "50%": half, "90%": busy})
    by_name = {f.name: f for f in figures}
    assert by_name["issuance: capacity"].value == 1000
    assert by_name["issuance at 50% (500/s): p99.9"].value == 9.0
    assert by_name["issuance at 50% (500/s): p99.9"].note == ""
    assert by_name["issuance at 90% (900/s): p99"].value == 30.0
    assert by_name["issuance at 90% (900/s): p99.9"].note == "88.9% answered OK"
