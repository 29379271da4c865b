"""What the broker's client commands (`token`, `audit`, `revoke`, `shadow`) share: the admin
bearer token from `--admin-token-file`, and a broker error response as one line."""

from __future__ import annotations

from pathlib import Path

import httpx

from pdp.admin import parse_admin_tokens


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
