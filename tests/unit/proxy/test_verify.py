"""The proxy's token checks, one rule each (docs/contract.md §7)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest

from proxy.keys import JWKSCache, KeysUnavailable
from proxy.revocations import RevocationSet
from proxy.verify import TokenRejected, TokenVerifier, VerifiedToken
from tests.unit.proxy.tokens import ISSUER, Signer


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


class Setup:
    def __init__(self) -> None:
        self.signer = Signer()
        self.revocations = RevocationSet()
        self.fetches = 0

        async def fetch() -> Any:
            self.fetches += 1
            return self.signer.jwks()

        self.keys = JWKSCache(fetch)
        asyncio.run(self.keys.refresh())
        self.verifier = TokenVerifier(ISSUER, ["orders-api", "payments-api"], self.keys.key, self.revocations)

    def verify(self, *authorization: str) -> VerifiedToken:
        return asyncio.run(self.verifier.verify(list(authorization)))

    def rejected(self, *authorization: str) -> TokenRejected:
        with pytest.raises(TokenRejected) as info:
            self.verify(*authorization)
        return info.value


@pytest.fixture
def s() -> Setup:
    return Setup()


def test_a_valid_token_is_accepted_with_its_subject_audience_and_scope(s: Setup) -> None:
    got = s.verify(f"Bearer {s.signer.token(scope='read write')}")
    assert (got.subject, got.audience, got.scopes, got.jti) == (
        "system:serviceaccount:demo:demo-app", "orders-api", ["read", "write"], "jti-1")


def test_no_authorization_header_is_a_challenge_without_error_code(s: Setup) -> None:
    err = s.rejected()
    assert (err.status, err.error, err.www_authenticate()) == (401, None, 'Bearer realm="jitmesh"')


def test_two_authorization_headers_are_invalid_request(s: Setup) -> None:
    token = s.signer.token()
    err = s.rejected(f"Bearer {token}", f"Bearer {token}")
    assert (err.status, err.error) == (400, "invalid_request")


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b", "Bearer not-a-jwt", "Bearer a.b.c",
                                    "Bearer " + "x" * 9000])
def test_a_malformed_authorization_header_is_invalid_token(s: Setup, header: str) -> None:
    err = s.rejected(header)
    assert (err.status, err.error) == (401, "invalid_token")
    assert 'error="invalid_token"' in err.www_authenticate()


def test_another_scheme_is_a_challenge(s: Setup) -> None:
    assert s.rejected("Basic dXNlcjpwYXNz").error is None


def test_an_hs256_token_is_refused_even_with_the_public_key_as_secret(s: Setup) -> None:
    token = jwt.encode({"iss": ISSUER, "sub": "x", "aud": "orders-api", "exp": int(time.time()) + 60,
                        "iat": int(time.time()), "jti": "j"}, "secret-that-is-long-enough-for-hmac-xx",
                       algorithm="HS256", headers={"typ": "at+jwt", "kid": "k1"})
    assert "algorithm 'HS256'" in s.rejected(f"Bearer {token}").description


def test_an_alg_none_token_is_refused(s: Setup) -> None:
    claims = {"iss": ISSUER, "sub": "x", "aud": "orders-api", "exp": int(time.time()) + 60, "iat": 1, "jti": "j"}
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': 'k1'})}.{_b64(claims)}."
    assert "algorithm 'none'" in s.rejected(f"Bearer {token}").description


def test_a_token_without_at_jwt_type_is_refused(s: Setup) -> None:
    token = s.signer.token(header={"typ": "JWT"})
    assert "not an access token" in s.rejected(f"Bearer {token}").description


def test_a_token_signed_by_an_unknown_key_is_refused(s: Setup) -> None:
    stranger = Signer(kid="k-stranger")
    assert "unknown key" in s.rejected(f"Bearer {stranger.token()}").description


def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(s: Setup) -> None:
    impostor = Signer(kid="k1")
    assert "signature" in s.rejected(f"Bearer {impostor.token()}").description


def test_a_flood_of_unknown_kids_costs_one_jwks_fetch_per_interval(s: Setup) -> None:
    s.keys._attempted_at = None  # the last fetch was long enough ago
    before = s.fetches

    async def flood() -> None:
        for i in range(200):
            with pytest.raises(TokenRejected):
                await s.verifier.verify([f"Bearer {Signer(kid=f'k-{i}').token()}"])

    asyncio.run(flood())
    assert s.fetches - before == 1


def test_a_new_key_is_picked_up_on_its_first_token(s: Setup) -> None:
    rotated = Signer(kid="k2")
    s.keys._attempted_at = None  # the last fetch was long enough ago
    s.signer = rotated
    assert s.verify(f"Bearer {rotated.token()}").subject.endswith("demo-app")


def test_a_token_for_another_audience_is_refused(s: Setup) -> None:
    assert "does not serve" in s.rejected(f"Bearer {s.signer.token(aud='ledger')}").description


def test_a_token_with_several_audiences_is_refused(s: Setup) -> None:
    token = s.signer.token(aud=["orders-api", "payments-api"])
    assert "exactly one audience" in s.rejected(f"Bearer {token}").description


def test_an_expired_token_is_refused(s: Setup) -> None:
    assert "expired" in s.rejected(f"Bearer {s.signer.token(exp=int(time.time()) - 31)}").description


def test_a_token_expired_within_the_leeway_is_accepted(s: Setup) -> None:
    s.verify(f"Bearer {s.signer.token(exp=int(time.time()) - 5)}")


def test_a_token_not_yet_valid_is_refused(s: Setup) -> None:
    assert "not valid yet" in s.rejected(f"Bearer {s.signer.token(nbf=int(time.time()) + 120)}").description


def test_a_token_from_another_issuer_is_refused(s: Setup) -> None:
    assert "not issued by" in s.rejected(f"Bearer {s.signer.token(iss='https://evil')}").description


def test_a_token_without_jti_is_refused(s: Setup) -> None:
    assert "jti" in s.rejected(f"Bearer {s.signer.token(jti=None)}").description


def test_a_dpop_bound_token_is_refused(s: Setup) -> None:
    token = s.signer.token(cnf={"jkt": "abc"})
    assert "DPoP" in s.rejected(f"Bearer {token}").description


def test_the_dpop_scheme_is_refused(s: Setup) -> None:
    assert "DPoP" in s.rejected(f"DPoP {s.signer.token()}").description


def test_a_revoked_jti_is_refused(s: Setup) -> None:
    s.revocations.apply("revoked", {"kind": "jti", "value": "jti-1", "created_at": time.time()})
    assert "revoked" in s.rejected(f"Bearer {s.signer.token()}").description


@pytest.mark.parametrize(("kind", "value"), [("subject", "system:serviceaccount:demo:demo-app"),
                                             ("pod_uid", "uid-1"), ("audience", "orders-api")])
def test_a_revoked_subject_pod_or_audience_is_refused(s: Setup, kind: str, value: str) -> None:
    s.revocations.apply("revoked", {"kind": kind, "value": value, "created_at": time.time() + 1})
    assert f"{kind.replace('_', ' ')} was revoked" in s.rejected(f"Bearer {s.signer.token()}").description


def test_after_a_lift_tokens_issued_before_the_revocation_stay_refused(s: Setup) -> None:
    now = time.time()
    ev = {"kind": "subject", "value": "system:serviceaccount:demo:demo-app", "created_at": now}
    s.revocations.apply("revoked", ev)
    s.revocations.apply("lifted", ev)
    s.rejected(f"Bearer {s.signer.token(iat=int(now) - 10)}")
    s.verify(f"Bearer {s.signer.token(iat=int(now) + 2)}")


def test_stale_keys_are_unavailable_not_a_rejection(s: Setup) -> None:
    s.keys.max_staleness = -1
    with pytest.raises(KeysUnavailable):
        s.verify(f"Bearer {s.signer.token()}")


def test_a_leeway_above_thirty_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 30"):
        TokenVerifier(ISSUER, ["a"], lambda kid: asyncio.sleep(0), RevocationSet(), leeway=60)


def test_a_token_verified_before_is_refused_once_revoked(s: Setup) -> None:
    token = s.signer.token()
    s.verify(f"Bearer {token}")
    s.revocations.apply("revoked", {"kind": "jti", "value": "jti-1", "created_at": time.time()})
    assert "revoked" in s.rejected(f"Bearer {token}").description


def test_a_token_verified_before_is_refused_once_expired() -> None:
    now = [time.time()]
    setup = Setup()
    verifier = TokenVerifier(ISSUER, ["orders-api"], setup.keys.key, setup.revocations, leeway=0,
                             clock=lambda: now[0])
    token = setup.signer.token(exp=int(now[0]) + 60)
    asyncio.run(verifier.verify([f"Bearer {token}"]))
    now[0] += 61
    with pytest.raises(TokenRejected, match="expired"):
        asyncio.run(verifier.verify([f"Bearer {token}"]))


def test_a_repeated_token_asks_for_its_key_once(s: Setup) -> None:
    asked: list[str] = []

    async def key(kid: str) -> Any:
        asked.append(kid)
        return await s.keys.key(kid)

    verifier = TokenVerifier(ISSUER, ["orders-api"], key, s.revocations)
    token = s.signer.token()
    for _ in range(3):
        asyncio.run(verifier.verify([f"Bearer {token}"]))
    assert asked == ["k1"]


def test_a_token_verified_before_gets_keys_unavailable_once_the_keys_are_stale(s: Setup) -> None:
    fresh = [True]
    verifier = TokenVerifier(ISSUER, ["orders-api"], s.keys.key, s.revocations, keys_fresh=lambda: fresh[0])
    token = s.signer.token()
    asyncio.run(verifier.verify([f"Bearer {token}"]))
    fresh[0] = False
    with pytest.raises(KeysUnavailable):
        asyncio.run(verifier.verify([f"Bearer {token}"]))
