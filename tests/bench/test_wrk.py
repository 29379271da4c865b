"""The wrk script we generate and the figures we read from its output."""

import pytest

from bench import wrk

SUMMARY = ('Running 10s test @ http://127.0.0.1:1/token\n  1 threads and 32 connections\n'
           '  5000 requests in 10.00s, 3.00MB read\n\n'
           'JITMESH_WRK {"requests": 5000, "duration_us": 10000000, "bytes": 3000000, '
           '"errors": {"connect": 0, "read": 1, "write": 0, "status": 20, "timeout": 2}, '
           '"latency_us": {"min": 900, "mean": 6400.5, "max": 90000, "p50": 5500, "p90": 9000, '
           '"p99": 18500, "p999": 40000}}\n')


def test_latencies_are_read_in_milliseconds():
    r = wrk.parse_output(SUMMARY)
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms) == (5.5, 9.0, 18.5, 90.0)
    assert r.mean_ms == pytest.approx(6.4005)


def test_every_kind_of_error_is_counted():
    assert wrk.parse_output(SUMMARY).errors == 23


def test_throughput_counts_only_successful_answers():
    r = wrk.parse_output(SUMMARY)
    assert r.ok_requests == 4980
    assert r.ok_per_second == pytest.approx(498.0)


def test_output_without_the_summary_line_is_an_error_naming_it():
    with pytest.raises(wrk.WrkOutputError, match="JITMESH_WRK"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_a_malformed_summary_line_is_an_error():
    with pytest.raises(wrk.WrkOutputError, match="malformed"):
        wrk.parse_output('JITMESH_WRK {"requests": 1}\n')


def test_script_sends_the_body_verbatim_with_its_content_type():
    script = wrk.lua_script("a=1&b=%20x", "application/x-www-form-urlencoded")
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"' in script
    assert "wrk.body = [====[a=1&b=%20x]====]" in script


def test_script_long_string_never_closes_inside_the_body():
    script = wrk.lua_script('{"x": "]====]"}', "application/json")
    assert '[=====[{"x": "]====]"}]=====]' in script


def test_script_reports_through_the_done_hook():
    assert "function done(summary, latency, requests)" in wrk.lua_script("", "text/plain")


def test_rotating_script_reads_one_body_per_line_from_its_argument():
    script = wrk.lua_rotating_script("application/x-www-form-urlencoded")
    assert "for line in io.lines(args[1])" in script
    assert '["Content-Type"] = content_type' in script


def test_rotating_script_takes_the_bodies_in_turn_and_starts_over():
    assert "next_body = next_body % #bodies + 1" in wrk.lua_rotating_script("text/plain")


def test_rotating_script_with_a_header_sends_each_lines_value_in_it():
    script = wrk.lua_rotating_script("application/x-www-form-urlencoded", header="DPoP")
    assert 'string.find(line, " ", 1, true)' in script
    assert '["DPoP"] = values[next_body]' in script
