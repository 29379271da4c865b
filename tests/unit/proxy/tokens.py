"""Signing helpers for the proxy's unit tests: a broker-like ES256 key set."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://broker.test"


class Signer:
    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        doc = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        doc.update(kid=self.kid, alg="ES256", use="sig")
        return doc

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def token(self, *, header: dict[str, Any] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "sub": "system:serviceaccount:demo:demo-app", "aud": "orders-api",
                                  "exp": now + 300, "iat": now, "nbf": now, "jti": "jti-1", "scope": "read",
                                  "client_id": "system:serviceaccount:demo:demo-app", "decision_id": "d-1",
                                  "kubernetes.io": {"namespace": "demo", "pod": {"name": "p", "uid": "uid-1"}}}
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        headers = {"typ": "at+jwt", "kid": self.kid}
        headers.update(header or {})
        return jwt.encode(claims, self.private, algorithm="ES256", headers=headers)
