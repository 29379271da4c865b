"""Signing keys and access-token claims, with a memory store and a chosen clock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import jwt
import pytest

from pdp.attestation.identity import PodInfo, Subject
from pdp.tokens import PUBLISH_MARGIN_SECONDS, KeyRing, access_token_claims, thumbprint
from tests.fixtures.broker import MemoryStore

T0 = 1_800_000_000.0
SUBJECT = Subject(sub="system:serviceaccount:payments:api", issuer="i", namespace="payments", service_account="api",
                  pod=PodInfo(name="api-1", uid="u-1"))


def kids(ring: KeyRing) -> set[str]:
    return {k["kid"] for k in ring.jwks()["keys"]}


def test_thumbprint_matches_rfc7638_example_shape() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x-coord", "y": "y-coord", "kid": "ignored", "use": "sig"}
    canonical = b'{"crv":"P-256","kty":"EC","x":"x-coord","y":"y-coord"}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert thumbprint(jwk) == expected


def test_first_refresh_creates_a_signing_key_in_the_store() -> None:
    store = MemoryStore()
    ring = KeyRing(store, rotation_seconds=100, max_ttl=60)
    asyncio.run(ring.refresh(T0))
    assert list(store.keys) == [ring.current.record.kid] == list(kids(ring))


def test_key_rotates_after_the_rotation_period_and_the_old_key_stays_published() -> None:
    store = MemoryStore()
    ring = KeyRing(store, rotation_seconds=100, max_ttl=60)
    asyncio.run(ring.refresh(T0))
    first = ring.current.record.kid
    asyncio.run(ring.refresh(T0 + 50))
    assert ring.current.record.kid == first
    asyncio.run(ring.refresh(T0 + 101))
    asyncio.run(ring.refresh(T0 + 101 + ring.prepublish))
    assert ring.current.record.kid != first
    assert kids(ring) == {first, ring.current.record.kid}


def test_a_new_key_is_published_before_it_signs() -> None:
    store = MemoryStore()
    ring = KeyRing(store, rotation_seconds=100, max_ttl=60)
    asyncio.run(ring.refresh(T0))
    first = ring.current.record.kid
    asyncio.run(ring.refresh(T0 + 101))
    (new,) = kids(ring) - {first}
    assert ring.current.record.kid == first
    asyncio.run(ring.refresh(T0 + 101 + ring.prepublish))
    assert ring.current.record.kid == new


def test_retired_key_leaves_jwks_once_its_last_token_expired() -> None:
    store = MemoryStore()
    ring = KeyRing(store, rotation_seconds=100, max_ttl=60)
    asyncio.run(ring.refresh(T0))
    first = ring.current.record.kid
    asyncio.run(ring.refresh(T0 + 101))
    asyncio.run(ring.refresh(T0 + 101 + 60 + PUBLISH_MARGIN_SECONDS - 1))
    assert first in kids(ring)
    asyncio.run(ring.refresh(T0 + 101 + 60 + PUBLISH_MARGIN_SECONDS + 1))
    assert first not in kids(ring) and first not in store.keys


def test_two_replicas_sharing_a_store_sign_with_one_key() -> None:
    store = MemoryStore()
    a, b = KeyRing(store, 100, 60), KeyRing(store, 100, 60)
    asyncio.run(a.refresh(T0))
    asyncio.run(b.refresh(T0 + 1))
    assert a.current.record.kid == b.current.record.kid
    asyncio.run(a.refresh(T0 + 150))
    asyncio.run(b.refresh(T0 + 151))
    assert a.current.record.kid == b.current.record.kid and len(store.keys) == 2
    asyncio.run(a.refresh(T0 + 200))
    asyncio.run(b.refresh(T0 + 201))
    assert a.current.record.kid == b.current.record.kid
    assert a.current.record.created_at == T0 + 150


def test_a_restarted_ring_reuses_the_stored_key() -> None:
    store = MemoryStore()
    first = KeyRing(store, 100, 60)
    asyncio.run(first.refresh(T0))
    again = KeyRing(store, 100, 60)
    asyncio.run(again.refresh(T0 + 10))
    assert again.current.record.kid == first.current.record.kid


def test_signed_token_has_the_at_jwt_header_and_verifies_with_the_ring() -> None:
    ring = KeyRing(MemoryStore(), 100, 60)
    asyncio.run(ring.refresh())
    claims = access_token_claims(issuer="http://b", subject=SUBJECT, audience="db", scopes=["read"], ttl=60,
                                 now=time.time(), decision_id="d")
    token = ring.sign(claims)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "typ": "at+jwt", "kid": ring.current.record.kid}
    assert ring.verify(token, "http://b") is not None
    assert ring.verify(token, "http://other") is None


def test_access_token_claims_are_the_contract_claims() -> None:
    c = access_token_claims(issuer="http://b", subject=SUBJECT, audience="db", scopes=["read", "write"], ttl=60,
                            now=T0 + 0.9, decision_id="d-1", jti="j-1")
    assert c == {"iss": "http://b", "sub": SUBJECT.sub, "aud": "db", "exp": int(T0) + 60, "iat": int(T0),
                 "nbf": int(T0), "jti": "j-1", "client_id": SUBJECT.sub, "scope": "read write",
                 "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"},
                                   "pod": {"name": "api-1", "uid": "u-1"}},
                 "decision_id": "d-1"}
    assert json.dumps(c)


def test_unrefreshed_ring_refuses_to_sign() -> None:
    with pytest.raises(RuntimeError):
        KeyRing(MemoryStore(), 100, 60).sign({})
