"""A local stand-in for the cluster's ServiceAccount token issuer, for `jitmesh up`,
the tests and the benchmarks. Tokens have the shape kube-apiserver gives projected
ServiceAccount tokens (RS256, `kid`, `kubernetes.io` claims); the public keys are
published in the same JWKS form as the API server's `/openid/v1/jwks`."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from jitmesh.contract import DEFAULT_SUBJECT_AUDIENCE, KUBERNETES_CLAIM, serviceaccount_subject

DEV_ISSUER_URL = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class PodRef:
    name: str
    uid: str


class DevIssuer:
    def __init__(self, issuer: str = DEV_ISSUER_URL, private_pem: bytes | None = None) -> None:
        self.issuer = issuer
        if private_pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            loaded = serialization.load_pem_private_key(private_pem, password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError("dev issuer key must be RSA")
            key = loaded
        self._key = key
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        # kube-apiserver's kid: base64url(SHA-256(DER public key))
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self._jwk = jwk

    @classmethod
    def load_or_create(cls, key_path: Path, issuer: str = DEV_ISSUER_URL) -> DevIssuer:
        if key_path.exists():
            return cls(issuer, key_path.read_bytes())
        dev = cls(issuer)
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.write_bytes(dev.private_pem())
        key_path.chmod(0o600)
        return dev

    def private_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks()))
        return path

    def mint(self, namespace: str = "default", service_account: str = "default", *,
             pod: PodRef | None = None, audience: str | list[str] = DEFAULT_SUBJECT_AUDIENCE,
             ttl: int = 600, now: float | None = None, extra: dict[str, Any] | None = None) -> str:
        """A projected ServiceAccount token as kube-apiserver would issue it."""
        now = time.time() if now is None else now
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                                f"{namespace}/{service_account}"))},
        }
        if pod is not None:
            k8s["pod"] = {"name": pod.name, "uid": pod.uid}
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": serviceaccount_subject(namespace, service_account),
            "aud": [audience] if isinstance(audience, str) else audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + ttl,
            "jti": str(uuid.uuid4()),
            KUBERNETES_CLAIM: k8s,
        }
        if extra:
            claims.update(extra)
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
