"""Sections run on their own: one that fails says why, and the others still run."""

from pathlib import Path

import pytest

from bench.report import Figure, SectionResult
from bench.runner import Context, Options, SectionSpec, parse_args, run_section, sections


def _ctx(tmp_path: Path) -> Context:
    return Context(options=Options(), workdir=tmp_path)


def test_a_section_that_raises_is_reported_unavailable_with_the_reason(tmp_path):
    def broken(ctx: Context) -> SectionResult:
        raise RuntimeError("broker did not become ready")

    result = run_section(SectionSpec("issuance", "1. Issuance", broken), _ctx(tmp_path))
    assert result.unavailable == "RuntimeError: broker did not become ready"
    assert result.figures == []


def test_a_section_that_works_keeps_its_figures(tmp_path):
    def fine(ctx: Context) -> SectionResult:
        return SectionResult("webhook", "5. Webhook", [Figure("p99", 1.0, "ms")])

    result = run_section(SectionSpec("webhook", "5. Webhook", fine), _ctx(tmp_path))
    assert result.unavailable is None and result.figures[0].value == 1.0


def test_every_section_has_a_name_to_run_it_on_its_own():
    keys = [s.key for s in sections()]
    assert keys == ["issuance", "postgres", "shadow", "strangers", "profile", "sidecar", "webhook", "revocation",
                    "proxy", "latency", "cluster", "dblogins"]


def test_unknown_section_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["issuanse"], sections())
    assert "unknown section issuanse" in capsys.readouterr().err


def test_sections_are_optional_and_options_have_short_defaults():
    args = parse_args([], sections())
    assert args.sections == [] and args.duration == 10.0 and args.connections == 32
