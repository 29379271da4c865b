"""Times as people and programs write them, read the same way by every command and endpoint
that takes one (`--since`, `--until`, `?since=`): a duration back from now (`90s`, `15m`,
`2h`, `7d`, `1h30m`), an RFC 3339 time with a zone, or unix seconds."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_SECONDS = (86400, 3600, 60, 1)
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: later than any time a record can carry
EXPECTED = ("a duration such as 90s, 15m, 2h, 7d or 1h30m (back from now), or an RFC 3339 time with a zone "
            "such as 2026-11-22T10:00:00Z")


class WhenError(ValueError):
    """A time that cannot be read; the message names the parameter and what is expected."""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_seconds(text: str) -> int | None:
    """`1h30m` -> 5400; None when `text` is not a duration."""
    m = _DURATION.fullmatch(text)
    if not text or m is None:
        return None
    return sum(int(v) * unit for v, unit in zip(m.groups(), _UNIT_SECONDS, strict=True) if v)


def parse_when(text: str, name: str, now: float, unix_seconds: bool = True) -> float:
    """`text` as unix seconds; `name` (e.g. `--since`) is what error messages call it. A bare
    number is unix seconds where `unix_seconds` (programs' parameters), else refused as
    ambiguous (a person's `--since 15`)."""
    expected = EXPECTED + (", or unix seconds" if unix_seconds else "")
    raw = text.strip()
    seconds = duration_seconds(raw)
    if seconds is not None:
        if seconds <= 0:
            raise WhenError(f"{name} {text!r:.60}: the duration must be longer than zero, e.g. 15m")
        return now - seconds
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if not unix_seconds:
            raise WhenError(f"{name} {text!r:.60}: expected {expected}")
        if not math.isfinite(number) or not 0 <= number <= LATEST:
            raise WhenError(f"{name} {text!r:.60}: unix seconds must be a finite number from 0 to {LATEST:.0f}")
        return number
    try:
        parsed = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise WhenError(f"{name} {text!r:.60}: expected {expected}") from None
    if parsed.tzinfo is None:
        raise WhenError(f"{name} {text!r:.60}: expected {expected} (an RFC 3339 time needs its zone)")
    return parsed.timestamp()


def parse_since(text: str, name: str, now: float, unix_seconds: bool = True) -> float:
    """A start of a window: as `parse_when`, and not in the future."""
    t = parse_when(text, name, now, unix_seconds)
    if t > now + 1:  # a second of slack for clocks read a moment apart
        raise WhenError(f"{name} {text!r:.60} is in the future (now is {rfc3339(now)})")
    return t
