"""Signing and keys: ES256 signing keys (kid = RFC 7638 thumbprint) kept in the store,
rotated every `--key-rotation` seconds, and RFC 9068 access tokens signed with the
current one. A retired key stays in `/jwks` until the last token it signed has expired,
and because keys live in the store a restarted broker (or a replica) signs with the same
key and publishes the same JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from jitmesh.contract import ACCESS_TOKEN_JWT_TYP, DECISION_ID_CLAIM, DRY_RUN_CLAIM, KUBERNETES_CLAIM, SIGNING_ALG
from jitmesh.log import get_logger
from pdp.attestation.identity import Subject
from pdp.store.base import SigningKey, Store

log = get_logger("pdp.tokens")

# A new key is published this long before it signs, so verifiers that cache /jwks (max-age
# 60) know it before they meet a token signed with it.
MAX_PREPUBLISH_SECONDS = 120
# Covers the pre-publication window and replicas that have not yet seen another's rotation.
PUBLISH_MARGIN_SECONDS = MAX_PREPUBLISH_SECONDS + 60


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    doc: dict[str, str] = json.loads(ECAlgorithm.to_jwk(public_key))
    return {"kty": doc["kty"], "crv": doc["crv"], "x": doc["x"], "y": doc["y"]}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexical order, no whitespace."""
    required = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    return _b64(hashlib.sha256(canonical).digest())


def new_signing_key(now: float) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SigningKey(kid=thumbprint(public_jwk(private.public_key())), private_pem=pem, created_at=now)


@dataclass(frozen=True)
class LoadedKey:
    record: SigningKey
    private: ec.EllipticCurvePrivateKey
    jwk: dict[str, str]

    @classmethod
    def load(cls, record: SigningKey) -> LoadedKey:
        private = serialization.load_pem_private_key(record.private_pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
            raise ValueError(f"signing key {record.kid} is not an EC P-256 key")
        jwk = {**public_jwk(private.public_key()), "kid": record.kid, "use": "sig", "alg": SIGNING_ALG}
        return cls(record, private, jwk)


def access_token_claims(*, issuer: str, subject: Subject, audience: str, scopes: Sequence[str], ttl: int,
                        now: float, decision_id: str, jti: str | None = None,
                        dry_run: bool = False, dpop_jkt: str | None = None) -> dict[str, Any]:
    """The claims of an RFC 9068 access token, as docs/contract.md §2 lists them; a token the
    policy denied and `--enforcement dry-run` issued anyway says so in `jitmesh.io/dry_run`;
    a token bound to a DPoP key carries its thumbprint in `cnf.jkt` (RFC 9449 section 6.1)."""
    k8s: dict[str, Any] = {"namespace": subject.namespace, "serviceaccount": {"name": subject.service_account}}
    if subject.pod is not None:
        k8s["pod"] = {"name": subject.pod.name, "uid": subject.pod.uid}
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject.sub,
        "aud": audience,
        "exp": iat + ttl,
        "iat": iat,
        "nbf": iat,
        "jti": jti or str(uuid.uuid4()),
        "client_id": subject.sub,
        "scope": " ".join(scopes),
        KUBERNETES_CLAIM: k8s,
        DECISION_ID_CLAIM: decision_id,
    }
    if not scopes:  # RFC 9068 section 2.2.3: scope is present only when scopes were granted
        del claims["scope"]
    if dry_run:
        claims[DRY_RUN_CLAIM] = True
    if dpop_jkt is not None:
        claims["cnf"] = {"jkt": dpop_jkt}
    return claims


class KeyRing:
    """The signing key and the published keys, mirrored from the store."""

    def __init__(self, store: Store, rotation_seconds: int, max_ttl: int) -> None:
        self.store = store
        self.rotation_seconds = rotation_seconds
        self.max_ttl = max_ttl
        self.prepublish = min(MAX_PREPUBLISH_SECONDS, rotation_seconds / 4)
        self._current: LoadedKey | None = None
        self._published: dict[str, LoadedKey] = {}
        self._jwks: dict[str, Any] = {"keys": []}

    @property
    def current(self) -> LoadedKey:
        if self._current is None:
            raise RuntimeError("KeyRing.refresh() has not run")
        return self._current

    def publish_until(self, now: float) -> float:
        return now + self.max_ttl + PUBLISH_MARGIN_SECONDS

    async def refresh(self, now: float | None = None) -> None:
        """Load keys from the store; rotate when the newest key is older than the rotation
        period (or there is none); sign with the newest key that has been published for the
        pre-publication window (the very first key signs at once); forget keys whose last
        token has expired."""
        now = time.time() if now is None else now
        records = await self.store.list_keys()
        signing = [k for k in records if k.retired_at is None or k.retired_at > now]
        newest = max(signing, key=lambda k: k.created_at, default=None)
        if newest is None or newest.created_at <= now - self.rotation_seconds:
            fresh = new_signing_key(now)
            chosen = await self.store.rotate_key(fresh, rotate_if_older_than=now - self.rotation_seconds,
                                                 publish_until=self.publish_until(now))
            if chosen.kid == fresh.kid:
                log.info("key.rotated", kid=fresh.kid, retired=[k.kid for k in signing])
            records = await self.store.list_keys()
            newest = next(k for k in records if k.kid == chosen.kid)
        for k in records:
            if k.publish_until is not None and k.publish_until < now and k.kid != newest.kid:
                await self.store.delete_key(k.kid)
        loaded = {k.kid: self._published.get(k.kid) or LoadedKey.load(k) for k in records
                  if k.kid == newest.kid or k.publish_until is None or k.publish_until >= now}
        self._published = loaded
        ready = [k for k in loaded.values() if k.record.created_at <= now - self.prepublish]
        self._current = max(ready, key=lambda k: k.record.created_at, default=loaded[newest.kid])
        self._jwks = {"keys": [dict(k.jwk) for k in sorted(loaded.values(), key=lambda k: -k.record.created_at)]}

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.current
        return jwt.encode(claims, key.private, algorithm=SIGNING_ALG,
                          headers={"kid": key.record.kid, "typ": ACCESS_TOKEN_JWT_TYP})

    def verify(self, token: str, issuer: str) -> dict[str, Any] | None:
        """The claims of a token this broker issued and that is still valid; None otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._published.get(header.get("kid", ""))
            if key is None or header.get("alg") != SIGNING_ALG:
                return None
            claims: dict[str, Any] = jwt.decode(
                token, key.private.public_key(), algorithms=[SIGNING_ALG], issuer=issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "jti", "sub"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return claims
