"""Who is an admin: bearer tokens listed in `--admin-token-file` (one a line, blank lines and
`#` comments ignored), compared in constant time; the file is reread when it changes.
Kubernetes identities are admins through SubjectAccessReview: `pdp.admin.auth`."""

from __future__ import annotations

import hmac
from pathlib import Path

from jitmesh.log import get_logger

log = get_logger("pdp.admin")


def parse_admin_tokens(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class AdminTokens:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tokens: tuple[bytes, ...] = ()
        self._stamp: tuple[float, int] | None = None
        self._reload()

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            self._tokens = tuple(t.encode() for t in parse_admin_tokens(self.path.read_text()))
            self._stamp = stamp
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("admin_tokens.unreadable", path=str(self.path), error=str(exc))

    def is_admin(self, authorization: str | None) -> bool:
        token = bearer_token(authorization)
        if token is None:
            return False
        self._reload()
        presented = token.encode()
        found = False
        for known in self._tokens:  # compare against every token: no early exit
            found |= hmac.compare_digest(presented, known)
        return found
