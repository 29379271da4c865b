"""What the broker's client commands (`token`, `audit`, `revoke`, `approvals`, `shadow`) share:
the admin bearer token from `--admin-token-file`, a broker error response as one line, and one
admin call with its errors printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from pdp.admin.tokens import parse_admin_tokens

DEFAULT_BROKER_URL = "http://127.0.0.1:8080"


def add_admin_client_flags(p: Any) -> None:
    """--broker-url and --admin-token-file, as every admin command takes them."""
    p.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="broker base URL (default %(default)s)")
    p.add_argument("--admin-token-file", default=None, help="admin bearer token file (the first token is used)")


class AdminTokenFileError(ValueError):
    """`--admin-token-file` cannot be read or holds no token."""


def admin_headers(path: str | None) -> dict[str, str]:
    """`Authorization: Bearer <the file's first token>`; no header without a file."""
    if not path:
        return {}
    try:
        tokens = parse_admin_tokens(Path(path).read_text())
    except OSError as exc:
        raise AdminTokenFileError(f"--admin-token-file {path!r}: cannot read it: {exc.strerror}") from None
    if not tokens:
        raise AdminTokenFileError(f"--admin-token-file {path!r} holds no token")
    return {"Authorization": f"Bearer {tokens[0]}"}


def error_text(r: httpx.Response) -> str:
    """`HTTP 403 access_denied: <description> (decision <id>)`, or just the status."""
    try:
        doc = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    if isinstance(doc, dict) and "error" in doc:
        text = f"{doc['error']}: {doc.get('error_description', '')}".rstrip(": ")
        if doc.get("decision_id"):
            text += f" (decision {doc['decision_id']})"
        return f"HTTP {r.status_code} {text}"
    return f"HTTP {r.status_code}"


def admin_request(prog: str, broker_url: str, token_file: str | None, method: str, path: str,
                  body: dict[str, Any] | None, ok: tuple[int, ...] = (200,)) -> dict[str, Any] | int:
    """The JSON answer of one admin call, or the exit code after printing why there is none:
    2 for a missing or bad --admin-token-file, 1 when the broker cannot be reached or refuses."""
    if not token_file:
        print(f"{prog}: --admin-token-file is required", file=sys.stderr)
        return 2
    try:
        headers = admin_headers(token_file)
    except AdminTokenFileError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        r = httpx.request(method, broker_url.rstrip("/") + path, json=body, timeout=10.0, headers=headers)
    except httpx.HTTPError as exc:
        print(f"{prog}: cannot reach the broker at {broker_url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code not in ok:
        print(f"{prog}: {error_text(r)}", file=sys.stderr)
        return 1
    doc: dict[str, Any] = r.json()
    return doc
