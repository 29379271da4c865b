"""Times as every command and endpoint reads them: durations, RFC 3339, unix seconds."""

from __future__ import annotations

import pytest

from pdp.when import WhenError, parse_since, parse_when

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("1h", NOW - 3600), ("1h30m", NOW - 5400), ("7d", NOW - 7 * 86400),
    ("2026-11-22T10:00:00Z", 1795341600.0), ("2026-11-22T12:00:00+02:00", 1795341600.0),
    ("1795341600", 1795341600.0), ("0", 0.0),
])
def test_times_are_read_in_every_form(text: str, expected: float) -> None:
    assert parse_when(text, "since", NOW) == expected


@pytest.mark.parametrize("text", ["NaN", "nan", "inf", "-inf", "1e400", "-1", "1e300", "0x10", "", "yesterday",
                                  "2026-11-22T10:00:00", "0s", "-5m"])
def test_bad_times_are_refused_naming_the_parameter(text: str) -> None:
    with pytest.raises(WhenError, match=r"^since "):
        parse_when(text, "since", NOW)


def test_a_bare_number_is_refused_where_unix_seconds_are_not_taken() -> None:
    with pytest.raises(WhenError, match="expected a duration"):
        parse_when("15", "--since", NOW, unix_seconds=False)


def test_a_start_in_the_future_is_refused() -> None:
    with pytest.raises(WhenError, match="in the future"):
        parse_since("2099-01-01T00:00:00Z", "--since", NOW)
