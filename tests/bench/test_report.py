"""How figures are shown: beside baseline, aim, verdict and the previous run."""

from bench.report import (
    Aim,
    Figure,
    SectionResult,
    format_number,
    previous_figures,
    render_table,
    results_document,
    unavailable,
)


def test_numbers_keep_few_digits_and_a_unit():
    assert format_number(1234.56, "/s") == "1,235/s"
    assert format_number(123.4, "ms") == "123 ms"
    assert format_number(12.34, "ms") == "12.3 ms"
    assert format_number(1.234, "ms") == "1.23 ms"
    assert format_number(3.0) == "3"
    assert format_number(7.5, "%") == "7.50%"


def test_aim_verdicts():
    assert Figure("rate", 1200, "/s", aim=Aim(">=", 1000)).verdict() == "ok"
    assert Figure("p99", 25, "ms", aim=Aim("<", 20)).verdict() == "MISS"
    assert Figure("p99", 20, "ms", aim=Aim("<", 20)).verdict() == "MISS"
    assert Figure("errors", 0).verdict() == ""


def test_a_figure_without_a_value_has_no_verdict():
    assert Figure("p99", None, "ms", aim=Aim("<", 20)).verdict() == ""


def _section() -> SectionResult:
    return SectionResult("issuance", "1. Issuance", [
        Figure("issuances/s", 812.0, "/s", 4210.0, "bare OPA", Aim(">=", 1000)),
        Figure("p99 latency", 71.0, "ms", 14.0, "bare OPA", Aim("<", 20)),
    ], notes=["32 clients"])


def test_table_row_shows_measured_baseline_aim_and_verdict():
    text = render_table([_section()])
    row = next(line for line in text.splitlines() if "issuances/s" in line)
    assert "812/s" in row and "4,210/s (bare OPA)" in row and "≥ 1,000/s" in row and "MISS" in row


def test_table_shows_the_section_title_and_notes():
    text = render_table([_section()])
    assert "1. Issuance" in text and "· 32 clients" in text


def test_table_columns_line_up():
    lines = [line for line in render_table([_section()]).splitlines() if "/s" in line or "ms" in line]
    positions = {line.index("(bare OPA)") for line in lines}
    assert len(positions) == 1


def test_unavailable_section_shows_its_reason_instead_of_figures():
    text = render_table([unavailable("shadow", "3. Shadow", "`jitmesh broker` has no --shadow-policy-path")])
    assert "3. Shadow" in text
    assert "not available: `jitmesh broker` has no --shadow-policy-path" in text


def test_previous_run_is_shown_beside_the_figure():
    text = render_table([_section()], {"issuance": {"issuances/s": 640.0}})
    row = next(line for line in text.splitlines() if "issuances/s" in line)
    assert row.rstrip().endswith("640/s")


def test_previous_figures_come_back_from_a_results_document():
    doc = results_document([_section(), unavailable("shadow", "3", "no")], {"cpus": 2})
    assert previous_figures(doc) == {"issuance": {"issuances/s": 812.0, "p99 latency": 71.0}}
    assert doc["schema_version"] == 1
