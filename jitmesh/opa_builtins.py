"""OPA builtins that an OPA Wasm module imports from its host, in Python, with OPA's semantics.

`opa build -t wasm` compiles most builtins into the module; the rest (`sprintf`, the `time.*`
family) are called back through `opa_builtin0..4`. `HOST_BUILTINS` maps each name we provide
to a function of the operands (JSON values; a number that was not an integer in the policy is a
`NumberLiteral`, a float that keeps OPA's spelling of it). A function raises `BuiltinError`
when OPA's builtin would fail; the evaluation is then an error, never a guess.

`sprintf` is Go's `fmt.Sprintf` as OPA calls it: an integer operand is a Go int (or *big.Int),
another number a float64, a string a string, anything else the policy's own text of the value
(`["a", 1]`, `{"k": true}`). The time builtins take nanoseconds since the epoch, or
`[ns, "zone"]` with an IANA zone name ("" and "UTC" are UTC, "Local" the host's zone).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final


class BuiltinError(Exception):
    pass


class NumberLiteral(float):
    """A JSON number that is not an integer, with its text as OPA keeps it."""

    text: str

    def __new__(cls, text: str) -> NumberLiteral:
        self = super().__new__(cls, text)
        self.text = text
        return self


# --- sprintf ---------------------------------------------------------------------------

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1


def _go_quote(s: str) -> str:
    """Go's strconv.Quote."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES: Final = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def rego_text(value: Any) -> str:
    """The policy's text of a JSON value, as OPA prints a term (object keys sorted)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _go_quote(value)
    if isinstance(value, NumberLiteral):
        return value.text
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(rego_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_go_quote(k)}: {rego_text(value[k])}" for k in sorted(value)) + "}"
    raise BuiltinError(f"not a JSON value: {type(value).__name__}")


class _Float(float):
    """A float64 operand of Go's fmt (kept apart from a Go int)."""


def _go_operand(value: Any) -> int | _Float | str:
    """What OPA hands Go's fmt for one element of sprintf's array."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return rego_text(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        text = value.text if isinstance(value, NumberLiteral) else repr(value)
        if re.fullmatch(r"-?[0-9]+", text):  # big.Int's SetString takes a plain integer of any size
            return int(text)
        return _Float(value)
    if isinstance(value, str):
        return value
    raise BuiltinError(f"not a JSON value: {type(value).__name__}")


def _go_type(arg: int | _Float | str) -> str:
    if isinstance(arg, str):
        return "string"
    if isinstance(arg, _Float):
        return "float64"
    return "int64" if INT64_MIN <= arg <= INT64_MAX else "*big.Int"


def _shortest_g(f: float, exp_limit: int) -> str:
    """Go's strconv.FormatFloat(f, 'g', -1, 64) (%v and %g of a float64)."""
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(f)).normalize().as_tuple()
    assert isinstance(exponent, int)
    ds = "".join(map(str, digits))
    exp = len(ds) + exponent - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= exp_limit:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{neg}0.{'0' * (-exp - 1)}{ds}"
    if len(ds) <= exp + 1:
        return neg + ds + "0" * (exp + 1 - len(ds))
    return f"{neg}{ds[:exp + 1]}.{ds[exp + 1:]}"


def _pad(body: str, flags: str, width: int | None, numeric: bool) -> str:
    if width is None or len(body) >= width:
        return body
    if "-" in flags:
        return body + " " * (width - len(body))
    if "0" in flags:
        if numeric and body[:1] in "+- ":
            return body[0] + "0" * (width - len(body)) + body[1:]
        return "0" * (width - len(body)) + body
    return " " * (width - len(body)) + body


def _sign(body: str, flags: str) -> str:
    if body.startswith("-"):
        return body
    if "+" in flags:
        return "+" + body
    if " " in flags:
        return " " + body
    return body


def _bad_verb(verb: str, flags: str, width: int | None, prec: int | None, arg: int | _Float | str) -> str:
    """Go's `%!verb(type=value)`, the value printed with %v and the directive's flags."""
    return f"%!{verb}({_go_type(arg)}={_format_one('v', flags, width, prec, arg)})"


def _format_one(verb: str, flags: str, width: int | None, prec: int | None, arg: int | _Float | str) -> str:
    if isinstance(arg, str):
        if verb in "sv":
            body = arg if prec is None else arg[:prec]
        elif verb == "q":
            body = _go_quote(arg if prec is None else arg[:prec])
        elif verb in "xX":
            body = arg.encode().hex()
            body = body.upper() if verb == "X" else body
        else:
            return _bad_verb(verb, flags, width, prec, arg)
        return _pad(body, flags, width, numeric=False)
    if isinstance(arg, _Float):
        f = float(arg)
        if verb == "v":
            body = _shortest_g(f, 6)
        elif verb == "g" and prec is None:
            body = _shortest_g(f, 6)
        elif verb in "gG":
            body = format(f, f".{prec}{verb}")
        elif verb in "fF":
            body = format(f, f".{6 if prec is None else prec}f")
        elif verb in "eE":
            body = format(f, f".{6 if prec is None else prec}{verb}")
        else:
            return _bad_verb(verb, flags, width, prec, arg)
        return _pad(_sign(body, flags), flags, width, numeric=True)
    n = arg
    if verb in "dv":
        digits = str(abs(n))
    elif verb in "xX":
        digits = format(abs(n), verb)
    elif verb == "o":
        digits = format(abs(n), "o")
    elif verb == "b":
        digits = format(abs(n), "b")
    else:
        return _bad_verb(verb, flags, width, prec, arg)
    if prec is not None:
        digits = digits.rjust(prec, "0") if not (prec == 0 and n == 0) else ""
        flags = flags.replace("0", "")  # Go: a precision turns zero padding off
    return _pad(_sign(("-" if n < 0 else "") + digits, flags), flags, width, numeric=True)


_DIRECTIVE: Final = re.compile(r"%([-+# 0]*)([0-9]+)?(?:\.([0-9]*))?(.?)", re.S)


def go_sprintf(fmt: str, values: list[Any]) -> str:
    """Go's fmt.Sprintf(fmt, values...) for JSON values, as OPA's sprintf builds the operands."""
    args = [_go_operand(v) for v in values]
    out: list[str] = []
    used = 0
    pos = 0
    while True:
        i = fmt.find("%", pos)
        if i < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:i])
        m = _DIRECTIVE.match(fmt, i)
        assert m is not None
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        pos = m.end()
        if verb in ("[", "*") or fmt[m.start(2) if width else i:pos].count("*"):
            raise BuiltinError(f"sprintf: format {fmt!r}: argument indexes and * widths are not supported")
        if verb == "":
            out.append("%!(NOVERB)")
            break
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        out.append(_format_one(verb, flags, int(width) if width else None,
                               (int(prec) if prec else 0) if prec is not None else None, arg))
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_format_one('v', '', None, None, a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def sprintf(fmt: Any, values: Any) -> str:
    if not isinstance(fmt, str):
        raise BuiltinError(f"sprintf: operand 1 must be string but got {type(fmt).__name__}")
    if not isinstance(values, list):
        raise BuiltinError(f"sprintf: operand 2 must be array but got {type(values).__name__}")
    return go_sprintf(fmt, values)


# --- time ------------------------------------------------------------------------------

_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _zone(name: Any) -> dt.tzinfo | None:
    if not isinstance(name, str):
        raise BuiltinError(f"time zone must be a string, got {type(name).__name__}")
    if name in ("", "UTC"):
        return dt.UTC
    if name == "Local":
        return None  # astimezone() with no zone: the host's
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BuiltinError(f"unknown time zone {name!r}") from None


def _nanoseconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BuiltinError(f"nanoseconds since the epoch must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not value.is_integer():
        raise BuiltinError("timestamp too big")  # OPA's words for a number that is not an int64
    n = int(value)
    if not INT64_MIN <= n <= INT64_MAX:
        raise BuiltinError("timestamp too big")
    return n


def _local_time(operand: Any) -> dt.datetime:
    """The time of `ns` or `[ns, zone]`, at microsecond precision (what clock and weekday need)."""
    if isinstance(operand, list):
        if len(operand) != 2:
            raise BuiltinError("expected [nanoseconds, time zone]")
        ns, zone = _nanoseconds(operand[0]), _zone(operand[1])
    else:
        ns, zone = _nanoseconds(operand), dt.UTC
    seconds, _ = divmod(ns, 1_000_000_000)  # Go floors: -1ns is 23:59:59 the day before
    t = _EPOCH + dt.timedelta(seconds=seconds)
    return t.astimezone(zone) if zone is not None else t.astimezone()


def time_clock(operand: Any) -> list[int]:
    t = _local_time(operand)
    return [t.hour, t.minute, t.second]


def time_weekday(operand: Any) -> str:
    return _WEEKDAYS[_local_time(operand).weekday()]


_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?(Z|([+-])([0-9]{2}):([0-9]{2}))")


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def time_parse_rfc3339_ns(value: Any) -> int:
    """Go's time.Parse(time.RFC3339, value).UnixNano(), refused outside what int64 nanoseconds hold."""
    if not isinstance(value, str):
        raise BuiltinError(f"time.parse_rfc3339_ns: operand 1 must be string but got {type(value).__name__}")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise BuiltinError(f"parsing time {value!r} as RFC 3339: not YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm)")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12:
        raise BuiltinError(f"parsing time {value!r}: month out of range")
    if not 1 <= day <= _days_in(year, month):
        raise BuiltinError(f"parsing time {value!r}: day out of range")
    if hour > 23 or minute > 59 or second > 59:
        raise BuiltinError(f"parsing time {value!r}: hour, minute or second out of range")
    offset = 0
    if m.group(8) != "Z":
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 24 or om > 60:
            raise BuiltinError(f"parsing time {value!r}: time zone offset out of range")
        offset = (oh * 3600 + om * 60) * (-1 if m.group(9) == "-" else 1)
    fraction = int((m.group(7) or "")[:9].ljust(9, "0"))
    if year < 1:
        raise BuiltinError("time outside of valid range")
    days = (dt.date(year, month, day) - dt.date(1970, 1, 1)).days
    ns = (days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1_000_000_000 + fraction
    if not INT64_MIN <= ns <= INT64_MAX:  # OPA's range: the instants an int64 of nanoseconds can hold
        raise BuiltinError("time outside of valid range")
    return ns



Builtin = Callable[..., Any]

HOST_BUILTINS: Final[Mapping[str, Builtin]] = {
    "sprintf": sprintf,
    "time.clock": time_clock,
    "time.weekday": time_weekday,
    "time.parse_rfc3339_ns": time_parse_rfc3339_ns,
}
