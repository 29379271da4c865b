"""Reading a request: its body under a size limit, JSON bodies, reasons, whole-number and time
query parameters.

A body over the limit is `invalid_request`; one up to DRAIN_LIMIT_BYTES is still read to its
end first, so the client is not reset mid-upload and sees the clear answer."""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any

from starlette.requests import Request

from jitmesh.contract import MAX_REASON_CHARS
from pdp import when
from pdp.http.errors import invalid_request

DRAIN_LIMIT_BYTES = 4 * 1024 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or `invalid_request` when it is larger than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT_BYTES:
        raise invalid_request(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_LIMIT_BYTES:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise invalid_request(f"the request body is larger than {limit} bytes")
    return b"".join(chunks)


def int_param(value: str | None, name: str, low: int, high: int, default: int | None) -> int | None:
    """A query parameter as a whole number from `low` to `high`; `default` when absent or empty."""
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise invalid_request(f"{name} {value!r:.40}: expected a whole number from {low} to {high}")
    return int(value)


def parse_time(value: str, name: str) -> float:
    """A time parameter: unix seconds, an RFC 3339 time or a duration back from now (pdp/when.py)."""
    try:
        return when.parse_when(value, name, time.time())
    except when.WhenError as exc:
        raise invalid_request(str(exc)) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes, content_type: str | None) -> Any:
    """An `application/json` body (the media type may be left out), or `invalid_request`
    saying what is wrong with it, never a parser's internals."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json":
        raise invalid_request(f"the body must be application/json, not {media!r:.80}")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise invalid_request("the body is not valid JSON: it is not UTF-8") from None
    except ValueError as exc:
        if "int_max_str_digits" in str(exc) or "Exceeds the limit" in str(exc):
            raise invalid_request("the body is not valid JSON for this API: a number in it has thousands of "
                                  "digits") from None
        raise invalid_request(f"the body is not valid JSON: {exc}"[:200]) from None


def check_reason(reason: Any, required: str | None) -> str | None:
    """A `reason` field, stripped; `required` is what to say when it is absent (None: optional)."""
    if reason is None or (isinstance(reason, str) and not reason.strip()):
        if required is not None:
            raise invalid_request(required)
        return None
    if not isinstance(reason, str):
        raise invalid_request(f"reason must be a string, not {type(reason).__name__}")
    if len(reason) > MAX_REASON_CHARS:
        raise invalid_request(f"reason is {len(reason)} characters long; at most {MAX_REASON_CHARS} are kept")
    control = next((c for c in reason if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise invalid_request(f"reason must not contain control characters (it has U+{ord(control):04X}); "
                              "write it on one line")
    return reason.strip()
