"""The host's OPA builtins (jitmesh/opa_builtins.py) as pure functions: Go's fmt as OPA's
sprintf uses it, and the UTC time builtins. The same cases run against the pinned OPA in
tests/integration/test_wasm_host_builtins.py."""

from __future__ import annotations

from typing import Any

import pytest

from jitmesh.opa_builtins import (
    BuiltinError,
    NumberLiteral,
    sprintf,
    time_clock,
    time_parse_rfc3339_ns,
    time_weekday,
)

DAY = 86_400 * 10**9
LEAP_DAY_2024 = 1_709_164_800 * 10**9  # 2024-02-29T00:00:00Z, a Thursday


@pytest.mark.parametrize(("fmt", "args", "expected"), [
    ("%s has no grant for audience %q", ["system:serviceaccount:a:b", "orders-api"],
     'system:serviceaccount:a:b has no grant for audience "orders-api"'),
    ("%02d:%02d", [5, 7], "05:07"),
    ("%v", [["a", 1, True, None]], '["a", 1, true, null]'),
    ("%v", [{"b": 1, "a": [2]}], '{"a": [2], "b": 1}'),
    ("%v", [NumberLiteral("1.5")], "1.5"),
    ("%v", [NumberLiteral("1e+20")], "1e+20"),
    ("%v", [NumberLiteral("2.0")], "2"),
    ("%d", [NumberLiteral("1.5")], "%!d(float64=1.5)"),
    ("%s", [3], "%!s(int64=3)"),
    ("%d", [2**70], str(2**70)),
    ("%q", ['say "hi"\n'], '"say \\"hi\\"\\n"'),
    ("%d %d", [1], "1 %!d(MISSING)"),
    ("%d", [1, "x"], "1%!(EXTRA string=x)"),
    ("100%%", [], "100%"),
    ("%.2f", [NumberLiteral("2.675")], "2.67"),
    ("%-4s|", ["ab"], "ab  |"),
])
def test_sprintf_formats_as_go_fmt_does_for_opa(fmt: str, args: list[Any], expected: str) -> None:
    assert sprintf(fmt, args) == expected


def test_sprintf_refuses_what_it_does_not_implement_rather_than_guess() -> None:
    with pytest.raises(BuiltinError, match="argument indexes"):
        sprintf("%[1]d", [1])


@pytest.mark.parametrize(("ns", "clock", "weekday"), [
    (0, [0, 0, 0], "Thursday"),
    (-1, [23, 59, 59], "Wednesday"),  # Go floors: one nanosecond before the epoch is the day before
    (-DAY - 1, [23, 59, 59], "Tuesday"),
    (LEAP_DAY_2024, [0, 0, 0], "Thursday"),
    (LEAP_DAY_2024 + DAY - 1, [23, 59, 59], "Thursday"),
    (LEAP_DAY_2024 + DAY, [0, 0, 0], "Friday"),
    (2**63 - 1, [23, 47, 16], "Friday"),
])
def test_time_clock_and_weekday_are_utc_and_floor_negative_times(ns: int, clock: list[int], weekday: str) -> None:
    assert time_clock(ns) == clock
    assert time_weekday(ns) == weekday


def test_time_clock_and_weekday_take_a_zone() -> None:
    assert time_clock([0, "Asia/Kolkata"]) == [5, 30, 0]
    assert time_weekday([0, "America/New_York"]) == "Wednesday"


@pytest.mark.parametrize("bad", [2**63, NumberLiteral("1.5"), "0", [0, "Not/AZone"], [0]])
def test_time_clock_refuses_what_opa_refuses(bad: Any) -> None:
    with pytest.raises(BuiltinError):
        time_clock(bad)


@pytest.mark.parametrize(("text", "ns"), [
    ("2024-02-29T00:00:00Z", LEAP_DAY_2024),
    ("1969-12-31T23:59:59.999999999Z", -1),
    ("2024-02-29T01:00:00+01:00", LEAP_DAY_2024),
    ("1970-01-01T00:00:00.1234567899Z", 123_456_789),  # past nanoseconds: cut, not rounded
    ("1970-01-01T00:00:00,5Z", 500_000_000),
])
def test_parse_rfc3339_ns(text: str, ns: int) -> None:
    assert time_parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize("bad", ["2023-02-29T00:00:00Z", "2026-12-07T24:00:00Z", "2026-12-07T23:59:60Z",
                                 "2026-12-07 05:00:00Z", "2026-12-07T05:00:00", "2262-04-11T23:47:16.854775808Z",
                                 "1600-01-01T00:00:00Z", 5])
def test_parse_rfc3339_ns_refuses_what_go_and_opa_refuse(bad: Any) -> None:
    with pytest.raises(BuiltinError):
        time_parse_rfc3339_ns(bad)
