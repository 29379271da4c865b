"""Figures derived from a load run: CPU per issuance and the CPU-bound ceiling."""

import pytest

from bench.issuance import LoadRun, cpu_bound_ceiling
from bench.wrk import WrkResult


def _run(requests: int, status_errors: int = 0, cpu: dict | None = None) -> LoadRun:
    result = WrkResult(requests=requests, duration_s=10.0, errors_connect=0, errors_read=0, errors_write=0,
                       errors_status=status_errors, errors_timeout=0, p50_ms=1, p90_ms=2, p99_ms=3, max_ms=4,
                       mean_ms=1.5)
    return LoadRun(result, cpu if cpu is not None else {"broker": 10.0, "opa": 5.0})


def test_cpu_per_issuance_counts_only_successful_issuances():
    run = _run(10_000, status_errors=5_000)
    assert run.cpu_ms_per_request("broker") == pytest.approx(2.0)


def test_cpu_of_an_unwatched_process_is_unknown():
    assert _run(100, cpu={"broker": 1.0}).cpu_ms_per_request("opa") is None


def test_ceiling_is_the_cpus_divided_by_the_cpu_one_issuance_costs():
    # 10,000 issuances cost 15 CPU-seconds: 1.5 ms each, so 2 CPUs allow 1,333/s
    assert cpu_bound_ceiling(_run(10_000), cpus=2) == pytest.approx(2000 / 1.5)


def test_no_ceiling_without_both_processes_measured():
    assert cpu_bound_ceiling(_run(100, cpu={"broker": 1.0}), cpus=2) is None


def test_fleet_note_says_how_many_requests_came_round_to_a_token_again():
    from bench.issuance import fleet_figures
    figures, note = fleet_figures(_run(1_000), _run(2_000), tokens=750)
    assert "750 subject tokens" in note and "25% of requests" in note
    assert figures[0].baseline == pytest.approx(200.0)


def test_cpu_figures_stand_beside_the_baseline_run():
    from bench.issuance import cpu_figures
    on = _run(10_000, cpu={"broker": 20.0, "opa": 10.0})
    on.mean_inside_ms.update({"handler": 1.0, "opa_call": 0.5})
    off = _run(10_000)
    off.mean_inside_ms.update({"handler": 0.8, "opa_call": 0.4})
    figs = {f.name: f for f in cpu_figures(on, off, "shadow off")}
    assert figs["broker CPU per issuance"].value == pytest.approx(2.0)
    assert figs["broker CPU per issuance"].baseline == pytest.approx(1.0)
    assert figs["  of which queued before handler"].value == pytest.approx(0.5)
    assert figs["    of which OPA call"].baseline_label == "shadow off"
