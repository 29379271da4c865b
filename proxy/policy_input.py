"""The access policy's input for one request, a pure function of the request and its
verified token, shaped like OPA-Envoy's (docs/contract.md §7) so that Envoy users' policies
read the same: `attributes.request.http` {method, path, host, scheme, headers},
`attributes.source.address`, `parsed_path`, `parsed_query`, `token`, `destination`.

`headers` are lower-cased, values of a repeated header joined with ", " (as Envoy does),
without `authorization`, `dpop`, `cookie` (credentials are not policy data) and without
client-supplied `x-jitmesh-*` headers (only the proxy may say who the caller is).
`parsed_path` and `parsed_query` follow OPA-Envoy: the percent-decoded path (so `%2F`
splits) split on "/" after its leading slashes, and each query parameter with its values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

WITHHELD_HEADERS = frozenset({"authorization", "dpop", "cookie", "proxy-authorization"})
PROXY_HEADER_PREFIX = "x-jitmesh-"


def policy_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        low = name.lower()
        if low in WITHHELD_HEADERS or low.startswith(PROXY_HEADER_PREFIX):
            continue
        out[low] = f"{out[low]}, {value}" if low in out else value
    return out


def parsed_path(path: str) -> list[str]:
    return unquote(path.partition("?")[0]).lstrip("/").split("/")


def parsed_query(path: str) -> dict[str, list[str]]:
    return parse_qs(path.partition("?")[2], keep_blank_values=True)


def target_problem(path: str) -> str | None:
    """Why a request target cannot be judged by path rules, or None: it must be an origin-form
    path, and no segment may be `.` or `..` once decoded (the upstream would resolve them, so
    `/orders/../admin` would be judged as one path and served as another)."""
    if not path.startswith("/"):
        return "the request target must be a path starting with /"
    segments = unquote(path.partition("?")[0]).split("/")
    if any(seg in (".", "..") for seg in segments):
        return "the request path has . or .. segments; send it normalized"
    return None


def build_input(*, method: str, path: str, host: str, scheme: str, headers: Iterable[tuple[str, str]],
                client: tuple[str, int] | None, claims: Mapping[str, Any], audience: str) -> dict[str, Any]:
    """`path` is the request target as received, query string included."""
    source: dict[str, Any] = {}
    if client is not None:
        source["address"] = {"socketAddress": {"address": client[0], "portValue": client[1]}}
    return {
        "attributes": {
            "request": {"http": {"method": method.upper(), "path": path, "host": host, "scheme": scheme,
                                 "headers": policy_headers(headers)}},
            "source": source,
        },
        "parsed_path": parsed_path(path),
        "parsed_query": parsed_query(path),
        "token": dict(claims),
        "destination": {"audience": audience},
    }
