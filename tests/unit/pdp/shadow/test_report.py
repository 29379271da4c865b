"""The shadow report document, its argument parsing and its three renderings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pdp.shadow.classify import SHADOW_CLASSES, ShadowTally, compare
from pdp.shadow.report import (
    SCHEMA_VERSION,
    ReportArgumentError,
    build_report,
    check_report,
    failed_classes,
    parse_fail_on,
    parse_format,
    parse_since,
    parse_time,
    render,
)

NOW = 1_795_000_000.0  # 2026-11-18T...


def inp(sub: str, aud: str, scopes: list[str], ttl: int | None = 300) -> dict[str, Any]:
    return {"subject": {"sub": sub}, "request": {"audience": aud, "scopes": scopes, "ttl_seconds": ttl}}


ALLOW_RW = {"allow": True, "scopes": ["read", "write"], "ttl_seconds": 300}
ALLOW_R = {"allow": True, "scopes": ["read"], "ttl_seconds": 300}
DENY = {"allow": False, "reasons": ["no"]}


def tally_of(cases: list[tuple[str, str, object, object]]) -> ShadowTally:
    tally = ShadowTally(samples_per_class=2)
    for i, (sub, aud, enforced, candidate) in enumerate(cases):
        tally.add(compare(decision_id=f"d{i}", time=NOW - 100 + i, policy_input=inp(sub, aud, ["read", "write"]),
                          enforced_decision=enforced, candidate_decision=candidate))
    return tally


def report_of(cases: list[tuple[str, str, object, object]], not_compared: int = 0) -> dict[str, Any]:
    tally = tally_of(cases)
    for _ in range(not_compared):
        tally.add_not_compared(NOW - 5, "sa", "aud")
    return build_report(tally.counts(), tally.samples(), source="live", since=NOW - 3600, until=NOW,
                        enforced_policy="jitmesh/authz/decision", candidate_policy="jitmesh/candidate/authz/decision",
                        top_k=2, samples_per_class=2)


MIXED = [
    ("a", "db", ALLOW_R, ALLOW_R),        # agree
    ("a", "db", ALLOW_R, ALLOW_R),        # agree
    ("b", "db", DENY, DENY),              # agree
    ("a", "db", ALLOW_R, DENY),           # allow_to_deny
    ("c", "api", DENY, ALLOW_R),          # deny_to_allow
    ("c", "db", DENY, ALLOW_R),           # deny_to_allow
    ("d", "api", DENY, ALLOW_R),          # deny_to_allow
    ("a", "db", ALLOW_RW, ALLOW_R),       # narrower
    ("a", "db", ALLOW_R, ALLOW_RW),       # wider
    ("a", "db", ALLOW_R, None),           # candidate_error (undefined)
    ("b", "db", DENY, {"allow": "yes"}),  # candidate_error (malformed)
]


def test_report_counts_classes_requests_and_agreement() -> None:
    doc = report_of(MIXED, not_compared=2)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["classes"] == {"agree": 3, "allow_to_deny": 1, "deny_to_allow": 3, "narrower": 1, "wider": 1,
                              "candidate_error": 2}
    assert doc["comparisons"] == 11
    assert doc["requests_seen"] == 13
    assert doc["agreement_rate"] == round(3 / 11, 4)


def test_report_matrix_is_enforced_by_candidate_verdict() -> None:
    doc = report_of(MIXED)
    assert doc["matrix"] == {"allow": {"allow": 4, "deny": 1, "error": 1},
                             "deny": {"allow": 3, "deny": 1, "error": 1}}


def test_report_top_subjects_and_audiences_are_ranked_and_bounded() -> None:
    doc = report_of(MIXED)
    assert doc["top"]["deny_to_allow"]["audiences"] == [{"name": "api", "count": 2}, {"name": "db", "count": 1}]
    assert [e["name"] for e in doc["top"]["deny_to_allow"]["subjects"]] == ["c", "d"]  # top_k=2 of c(2), d(1)
    assert "allow_to_deny" in doc["top"] and "narrower" in doc["top"]


def test_report_keeps_at_most_samples_per_class_newest_first() -> None:
    doc = report_of(MIXED)
    # the tally keeps the first two of each minute; the report lists them newest first
    assert [s["decision_id"] for s in doc["samples"]["deny_to_allow"]] == ["d5", "d4"]
    assert [s["decision_id"] for s in doc["samples"]["agree"]] == ["d1", "d0"]


def test_report_candidate_error_samples_carry_the_error() -> None:
    doc = report_of(MIXED)
    errors = {s["decision_id"]: s["candidate_error"] for s in doc["samples"]["candidate_error"]}
    assert errors["d9"] == "decision is undefined"
    assert "allow" in errors["d10"]


@pytest.mark.parametrize(("cases", "status"), [
    ([], "no_data"),
    ([("a", "db", ALLOW_R, ALLOW_R)], "agrees"),
    ([("a", "db", ALLOW_R, ALLOW_R), ("a", "db", ALLOW_RW, ALLOW_R)], "changes"),
    ([("a", "db", ALLOW_R, DENY)], "changes"),
    ([("a", "db", ALLOW_R, ALLOW_R), ("a", "db", DENY, ALLOW_R)], "findings"),
    ([("a", "db", ALLOW_R, None)], "findings"),
])
def test_report_verdict(cases: list[tuple[str, str, object, object]], status: str) -> None:
    assert report_of(cases)["verdict"]["status"] == status


def test_report_verdict_names_deny_to_allow_as_a_security_finding() -> None:
    text = report_of(MIXED)["verdict"]["text"]
    assert text.startswith("DO NOT PROMOTE") and "3 deny_to_allow" in text and "security finding" in text


def test_empty_report_has_no_agreement_rate() -> None:
    doc = report_of([])
    assert doc["comparisons"] == 0 and doc["agreement_rate"] is None and doc["top"] == {}


# --- rendering ---------------------------------------------------------------------------

def test_json_rendering_round_trips_the_document() -> None:
    doc = report_of(MIXED)
    assert json.loads(render(doc, "json")) == doc


def test_table_rendering_shows_counts_matrix_tops_samples_and_verdict() -> None:
    out = render(report_of(MIXED, not_compared=2), "table")
    assert "Requests seen: 13   Comparisons: 11   Agreement: 27.3%" in out
    assert "Not compared: 2 (the enforced decision never came: OPA unreachable)" in out
    assert any(line.split() == ["deny_to_allow", "3", "27.3%"] for line in out.splitlines())
    assert any(line.split() == ["allow", "4", "1", "1"] for line in out.splitlines())
    assert any(line.split() == ["deny", "3", "1", "1"] for line in out.splitlines())
    assert "subjects:  c (2), d (1)" in out
    assert "samples:   d5, d4" in out
    assert "d9: decision is undefined" in out
    assert out.rstrip().splitlines()[-1].startswith("VERDICT: DO NOT PROMOTE")


def test_markdown_rendering_has_tables_and_the_verdict_first() -> None:
    out = render(report_of(MIXED), "markdown")
    lines = out.splitlines()
    assert lines[0].startswith("## Shadow report (live)")
    assert lines[2].startswith("**Verdict: DO NOT PROMOTE")
    assert "| `deny_to_allow` | 3 | 27.3% |" in lines
    assert "| deny | 3 | 1 | 1 |" in lines
    assert any(line.startswith("| `deny_to_allow` | c (2), d (1) | api (2), db (1) | `d5`, `d4` |") for line in lines)


def test_markdown_escapes_pipes_in_names() -> None:
    out = render(report_of([("a|b", "db", DENY, ALLOW_R)]), "markdown")
    assert "a\\|b (1)" in out


def test_render_rejects_an_unknown_format() -> None:
    with pytest.raises(ReportArgumentError, match=r"'yaml'.*table, json, markdown"):
        render(report_of([]), "yaml")


# --- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 7 * 86400), ("1h30m", 5400), ("1d2h3m4s", 93784),
])
def test_since_accepts_durations(text: str, seconds: int) -> None:
    assert parse_since(text, NOW) == NOW - seconds


def test_since_accepts_rfc3339_times() -> None:
    assert parse_since("2026-11-18T10:00:00Z", NOW) == parse_time("2026-11-18T10:00:00+00:00")
    assert parse_since("2026-11-18T12:00:00+02:00", NOW) == parse_time("2026-11-18T10:00:00Z")


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected a duration"),
    ("yesterday", "expected a duration"),
    ("15", "expected a duration"),
    ("15x", "expected a duration"),
    ("-5m", "expected a duration"),
    ("0m", "longer than zero"),
    ("2026-11-18T10:00:00", "expected a duration"),
    ("2099-01-01T00:00:00Z", "in the future"),
])
def test_since_rejects_bad_values_naming_them(text: str, message: str) -> None:
    with pytest.raises(ReportArgumentError, match=message) as err:
        parse_since(text, NOW)
    assert repr(text) in str(err.value)


def test_fail_on_parses_known_classes() -> None:
    assert parse_fail_on("deny_to_allow, candidate_error") == ("deny_to_allow", "candidate_error")
    assert set(parse_fail_on(",".join(SHADOW_CLASSES))) == set(SHADOW_CLASSES)


@pytest.mark.parametrize(("text", "message"), [("", "at least one"), (" , ", "at least one"),
                                               ("deny_to_allow,denied", "unknown class 'denied'")])
def test_fail_on_rejects_bad_values(text: str, message: str) -> None:
    with pytest.raises(ReportArgumentError, match=message):
        parse_fail_on(text)


def test_format_rejects_unknown() -> None:
    assert parse_format("markdown") == "markdown"
    with pytest.raises(ReportArgumentError, match="--format 'csv'"):
        parse_format("csv")


def test_failed_classes_are_the_listed_ones_that_occurred() -> None:
    doc = report_of([("a", "db", ALLOW_R, DENY), ("a", "db", ALLOW_R, None)])
    assert failed_classes(doc, ("deny_to_allow", "candidate_error")) == ["candidate_error"]
    assert failed_classes(doc, ("deny_to_allow",)) == []


@pytest.mark.parametrize(("doc", "message"), [
    ([], "not a JSON object"),
    ({"schema_version": 2}, "schema_version 2"),
    ({"schema_version": 1}, "lacks"),
])
def test_check_report_rejects_foreign_documents(doc: object, message: str) -> None:
    with pytest.raises(ReportArgumentError, match=message):
        check_report(doc)


def test_tally_bounds_samples_per_class_and_minute() -> None:
    tally = ShadowTally(samples_per_class=3)
    for i in range(50):
        tally.add(compare(decision_id=f"d{i}", time=NOW, policy_input=inp("a", "db", ["read"]),
                          enforced_decision=ALLOW_R, candidate_decision=ALLOW_R))
    counts, samples = tally.drain()
    assert [c.count for c in counts] == [50]
    assert len(samples) == 3
    assert tally.counts() == [] and tally.samples() == []
