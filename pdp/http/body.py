"""Reading a request: its body under a size limit, whole-number and time query parameters.

A body over the limit is `invalid_request`; one up to DRAIN_LIMIT_BYTES is still read to its
end first, so the client is not reset mid-upload and sees the clear answer."""

from __future__ import annotations

import time

from starlette.requests import Request

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
