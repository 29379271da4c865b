"""The sidecar's proof-of-possession key (RFC 9449 DPoP): a P-256 key made at start, held in
this process's memory only, never written to a file or a log, and gone with the process."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from jitmesh import dpop


class ProofKey:
    """Signs DPoP proofs with a key nobody else ever sees. Its repr names only the thumbprint."""

    __slots__ = ("_key", "jkt")

    def __init__(self) -> None:
        self._key: Any = dpop.new_key()
        self.jkt: str = dpop.thumbprint(dpop.public_jwk(self._key))

    def proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str:
        """A fresh proof for one request: `htm` and `htu` are its method and URL; with
        `access_token`, the proof carries its hash (`ath`), as a resource server wants; `nonce`
        is a server's `DPoP-Nonce`."""
        # RFC 9449 section 4.2: htu is the target URI without its query and fragment
        target = urlsplit(htu)._replace(query="", fragment="").geturl()
        return dpop.make_proof(self._key, htm, target, access_token=access_token, nonce=nonce)

    def __repr__(self) -> str:
        return f"ProofKey(jkt={self.jkt!r})"
