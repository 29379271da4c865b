"""Turning what another module's bench run() returns into figures."""

from bench.external import call_with, figures_from, flatten, label
from bench.report import Aim


def test_units_come_from_the_key_suffix():
    assert label("p99_ms") == ("p99", "ms", 1.0)
    assert label("rss_bytes") == ("rss", "MB", 1e-6)
    assert label("idle_cpu_pct") == ("idle cpu", "%", 1.0)
    assert label("sidecars") == ("sidecars", "", 1.0)


def test_nested_numbers_are_flattened_and_other_values_dropped():
    doc = {"rss_mb": 31, "idle": {"cpu_pct": 0.2}, "ok": True, "name": "x"}
    assert flatten(doc) == {"rss_mb": 31.0, "idle_cpu_pct": 0.2}


def test_known_keys_get_their_aim():
    figs = figures_from({"p99_ms": 7.0, "p50_ms": 2.0}, {"p99_ms": Aim("<", 5)})
    by_name = {f.name: f for f in figs}
    assert by_name["p99"].verdict() == "MISS"
    assert by_name["p50"].aim is None


def test_only_the_arguments_run_names_are_passed():
    def run(duration: float) -> dict:
        return {"duration": duration}
    assert call_with(run, {"duration": 2.0, "workdir": "/tmp"}) == {"duration": 2.0}


def test_run_taking_keyword_arguments_gets_everything():
    def run(**kwargs: object) -> dict:
        return dict(kwargs)
    assert call_with(run, {"a": 1, "b": 2}) == {"a": 1, "b": 2}
