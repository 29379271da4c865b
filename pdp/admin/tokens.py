"""Bearer tokens from a file: `--admin-token-file` (admins) and `--reader-token-file` (readers:
introspection and the revocation event stream). One token a line, blank lines and `#`
comments ignored; the file is reread when it changes. Only the SHA-256 of each token is
kept, and a presented token is compared by its SHA-256 against every one of them, so
neither the time taken nor an early exit tells anything about a token's length or prefix.
Kubernetes identities are admins or readers through SubjectAccessReview: `pdp.admin.auth`."""

from __future__ import annotations

import hashlib
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


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._digests: tuple[bytes, ...] = ()
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
            self._digests = tuple(token_digest(t) for t in parse_admin_tokens(self.path.read_text()))
            self._stamp = stamp
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("token_file.unreadable", path=str(self.path), error=str(exc))

    def lists(self, authorization: str | None) -> bool:
        """Whether the bearer token of this Authorization header is in the file."""
        token = bearer_token(authorization)
        if token is None:
            return False
        self._reload()
        presented = token_digest(token)
        found = False
        for known in self._digests:  # compare against every token: no early exit
            found |= hmac.compare_digest(presented, known)
        return found

    is_admin = lists


AdminTokens = TokenFile
