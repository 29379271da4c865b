"""The proxy's DPoP checks (RFC 9449 section 7), one rule each. Proofs are built here with
PyJWT and cryptography, not with jitmesh.dpop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.keys import JWKSCache
from proxy.revocations import RevocationSet
from proxy.verify import RequestTarget, TokenRejected, TokenVerifier, VerifiedToken
from tests.unit.proxy.tokens import ISSUER, Signer

URL = "http://orders-api.shop.svc:8080/orders/7?x=1"
TARGET = RequestTarget("GET", URL)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Client:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        pub = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64(pub.x.to_bytes(32, "big")),
                    "y": b64(pub.y.to_bytes(32, "big"))}
        canonical = '{"crv":"P-256","kty":"EC","x":"' + self.jwk["x"] + '","y":"' + self.jwk["y"] + '"}'
        self.jkt = b64(hashlib.sha256(canonical.encode()).digest())

    def proof(self, token: str | None, htm: str = "GET", htu: str = URL, **claims: Any) -> str:
        body: dict[str, Any] = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token is not None:
            body["ath"] = b64(hashlib.sha256(token.encode()).digest())
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})


class Setup:
    def __init__(self) -> None:
        self.signer = Signer()
        self.client = Client()
        keys = JWKSCache(self._jwks)
        asyncio.run(keys.refresh())
        self.verifier = TokenVerifier(ISSUER, ["orders-api"], keys.key, RevocationSet())
        self.token = self.signer.token(cnf={"jkt": self.client.jkt})

    async def _jwks(self) -> Any:
        return self.signer.jwks()

    def verify(self, authorization: str, *proofs: str, target: RequestTarget = TARGET) -> VerifiedToken:
        return asyncio.run(self.verifier.verify([authorization], list(proofs), target))

    def rejected(self, authorization: str, *proofs: str, target: RequestTarget = TARGET) -> TokenRejected:
        with pytest.raises(TokenRejected) as info:
            self.verify(authorization, *proofs, target=target)
        return info.value


@pytest.fixture
def s() -> Setup:
    return Setup()


def dpop_proof_error(err: TokenRejected, check: str) -> None:
    assert (err.status, err.error) == (401, "invalid_dpop_proof"), err.description
    assert f"check of {check}" in err.description, err.description
    assert err.www_authenticate().startswith('DPoP realm="jitmesh", error="invalid_dpop_proof"')


def test_a_bound_token_with_a_proof_of_its_key_is_accepted(s: Setup) -> None:
    got = s.verify(f"DPoP {s.token}", s.client.proof(s.token))
    assert got.claims["cnf"] == {"jkt": s.client.jkt}


def test_each_request_of_a_cached_token_needs_its_own_proof(s: Setup) -> None:
    s.verify(f"DPoP {s.token}", s.client.proof(s.token))
    s.verify(f"DPoP {s.token}", s.client.proof(s.token))
    err = s.rejected(f"DPoP {s.token}")
    assert err.error == "invalid_dpop_proof"


def test_a_bound_token_presented_as_bearer_is_refused(s: Setup) -> None:
    err = s.rejected(f"Bearer {s.token}", s.client.proof(s.token))
    assert (err.status, err.error) == (401, "invalid_token")
    assert err.www_authenticate().startswith('DPoP realm="jitmesh", error="invalid_token"')
    assert 'algs="ES256' in err.www_authenticate()


def test_an_unbound_token_presented_as_dpop_is_refused(s: Setup) -> None:
    token = s.signer.token()
    err = s.rejected(f"DPoP {token}", s.client.proof(token))
    assert err.error == "invalid_token" and err.scheme == "DPoP"


def test_an_unbound_bearer_token_ignores_a_dpop_header(s: Setup) -> None:
    token = s.signer.token()
    s.verify(f"Bearer {token}", "anything")


def test_a_bound_token_without_a_proof_is_refused(s: Setup) -> None:
    err = s.rejected(f"DPoP {s.token}")
    assert err.error == "invalid_dpop_proof" and "exactly one DPoP proof" in err.description


def test_two_proofs_are_refused(s: Setup) -> None:
    err = s.rejected(f"DPoP {s.token}", s.client.proof(s.token), s.client.proof(s.token))
    assert err.error == "invalid_dpop_proof"


def test_a_proof_without_ath_is_refused(s: Setup) -> None:
    dpop_proof_error(s.rejected(f"DPoP {s.token}", s.client.proof(None)), "ath")


def test_a_proof_with_the_hash_of_another_token_is_refused(s: Setup) -> None:
    dpop_proof_error(s.rejected(f"DPoP {s.token}", s.client.proof("another-token")), "ath")


def test_a_proof_by_another_key_is_refused(s: Setup) -> None:
    dpop_proof_error(s.rejected(f"DPoP {s.token}", Client().proof(s.token)), "jkt")


def test_a_proof_for_another_method_is_refused(s: Setup) -> None:
    dpop_proof_error(s.rejected(f"DPoP {s.token}", s.client.proof(s.token, htm="POST")), "htm")


def test_a_proof_for_another_url_is_refused(s: Setup) -> None:
    proof = s.client.proof(s.token, htu="http://orders-api.shop.svc:8080/admin")
    dpop_proof_error(s.rejected(f"DPoP {s.token}", proof), "htu")


def test_a_proof_for_another_host_is_refused(s: Setup) -> None:
    proof = s.client.proof(s.token, htu="http://other.shop.svc:8080/orders/7")
    dpop_proof_error(s.rejected(f"DPoP {s.token}", proof), "htu")


def test_a_stale_proof_is_refused(s: Setup) -> None:
    dpop_proof_error(s.rejected(f"DPoP {s.token}", s.client.proof(s.token, iat=int(time.time()) - 300)), "iat")


def test_a_replayed_proof_is_refused(s: Setup) -> None:
    proof = s.client.proof(s.token)
    s.verify(f"DPoP {s.token}", proof)
    dpop_proof_error(s.rejected(f"DPoP {s.token}", proof), "jti")


def test_a_refused_proof_is_not_spent(s: Setup) -> None:
    proof = s.client.proof(s.token)
    s.rejected(f"DPoP {s.token}", proof, target=RequestTarget("POST", URL))
    s.verify(f"DPoP {s.token}", proof)


def test_a_challenge_stays_printable_ascii_whatever_the_proof_said(s: Setup) -> None:
    err = s.rejected(f"DPoP {s.token}", s.client.proof(s.token, htm="GÉT€"))
    header = err.www_authenticate()
    assert header.isascii() and all(" " <= c <= "~" for c in header)
    header.encode("latin-1")
