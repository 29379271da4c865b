"""Subject-token attestation with in-process keys and fakes: JWKS verification rules, the
Kubernetes claims, JWKS sources, TokenReview and pod binding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from jitmesh.devissuer import DevIssuer, PodRef
from pdp.attestation.identity import AttestationError, AttestationUnavailable, PodInfo, Subject
from pdp.attestation.kube import TokenReviewAttestor, TokenReviewRefused
from pdp.attestation.verify import (
    JWKSURL,
    JWKSAttestor,
    JWKSFile,
    VerifiedTokens,
    bind_pod,
    parse_jwks,
    subject_from_claims,
    verify_jwt,
)

AUD = "jitmesh"
DEV = DevIssuer()
KEYS = parse_jwks(DEV.jwks())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = jwt.decode(DEV.mint("payments", "api", pod=PodRef("p", "u")),
                                     options={"verify_signature": False})
    doc.update(changes)
    return doc


def verify(token: str, keys: Any = KEYS) -> dict[str, Any]:
    return verify_jwt(token, keys, DEV.issuer, AUD)


def test_valid_token_verifies() -> None:
    assert verify(DEV.mint("payments", "api"))["sub"] == "system:serviceaccount:payments:api"


def test_token_with_several_audiences_including_ours_verifies() -> None:
    assert verify(DEV.mint("payments", "api", audience=["https://kubernetes.default.svc", AUD]))


def test_alg_none_is_refused() -> None:
    token = f"{b64(json.dumps({'alg': 'none', 'kid': DEV.kid}).encode())}.{b64(json.dumps(claims()).encode())}."
    with pytest.raises(AttestationError, match="alg"):
        verify(token)


def test_hs256_keyed_with_the_rsa_public_key_is_refused() -> None:
    pem = DEV._key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': DEV.kid}).encode())}.{b64(json.dumps(claims()).encode())}"
    token = f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    with pytest.raises(AttestationError, match="HS256"):
        verify(token)


def test_alg_that_does_not_fit_the_key_type_is_refused() -> None:
    token = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": DEV.kid})
    with pytest.raises(AttestationError, match="does not fit"):
        verify(token)


def test_ps256_over_an_rs256_only_key_is_refused() -> None:
    token = jwt.encode(claims(), DEV._key, algorithm="PS256", headers={"kid": DEV.kid})
    with pytest.raises(AttestationError, match="differs"):
        verify(token)


def test_es256_key_verifies_es256_tokens() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "ec1"}
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "ec1"})
    assert verify(token, parse_jwks({"keys": [jwk]}))


def test_es384_header_over_a_p256_key_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "ec1"}
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "ec1"})
    _, payload, sig = token.split(".")
    forged = f"{b64(json.dumps({'alg': 'ES384', 'kid': 'ec1'}).encode())}.{payload}.{sig}"
    with pytest.raises(AttestationError):
        verify(forged, parse_jwks({"keys": [jwk]}))


def test_eddsa_key_verifies_eddsa_tokens() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = {**json.loads(OKPAlgorithm.to_jwk(key.public_key())), "kid": "ed"}
    token = jwt.encode(claims(), key, algorithm="EdDSA", headers={"kid": "ed"})
    assert verify(token, parse_jwks({"keys": [jwk]}))


def test_unknown_kid_is_refused() -> None:
    with pytest.raises(AttestationError, match="kid"):
        verify(DevIssuer(DEV.issuer).mint("payments", "api"))


def test_missing_kid_is_refused() -> None:
    with pytest.raises(AttestationError, match="kid"):
        verify(jwt.encode(claims(), DEV._key, algorithm="RS256"))


def test_foreign_signature_under_a_known_kid_is_refused() -> None:
    token = jwt.encode(claims(), DevIssuer()._key, algorithm="RS256", headers={"kid": DEV.kid})
    with pytest.raises(AttestationError, match="signature"):
        verify(token)


def test_expired_token_is_refused() -> None:
    with pytest.raises(AttestationError, match="expired"):
        verify(DEV.mint("payments", "api", now=time.time() - 700, ttl=600))


def test_not_yet_valid_token_is_refused() -> None:
    with pytest.raises(AttestationError, match="not yet valid"):
        verify(DEV.mint("payments", "api", now=time.time() + 600))


def test_wrong_issuer_is_refused() -> None:
    with pytest.raises(AttestationError, match="issuer"):
        verify(DevIssuer("https://other", DEV.private_pem()).mint("payments", "api"))


def test_wrong_audience_is_refused() -> None:
    with pytest.raises(AttestationError, match="audience"):
        verify(DEV.mint("payments", "api", audience="vault"))


def test_token_without_exp_is_refused() -> None:
    doc = claims()
    del doc["exp"]
    with pytest.raises(AttestationError, match="exp"):
        verify(jwt.encode(doc, DEV._key, algorithm="RS256", headers={"kid": DEV.kid}))


def test_not_a_jwt_is_refused() -> None:
    with pytest.raises(AttestationError, match="not a JWT"):
        verify("garbage")


def test_kubernetes_claims_become_the_subject() -> None:
    doc = claims()
    subject = subject_from_claims(doc)
    assert subject == Subject(sub="system:serviceaccount:payments:api", issuer=DEV.issuer, namespace="payments",
                              service_account="api", pod=PodInfo(name="p", uid="u"), issued_at=doc["iat"])


def test_sub_that_disagrees_with_the_kubernetes_claims_is_refused() -> None:
    with pytest.raises(AttestationError, match="does not match"):
        subject_from_claims(claims(sub="system:serviceaccount:kube-system:admin"))


def test_legacy_token_without_kubernetes_claims_is_refused() -> None:
    doc = claims()
    del doc["kubernetes.io"]
    with pytest.raises(AttestationError, match=r"kubernetes\.io"):
        subject_from_claims(doc)


def test_jwks_skips_symmetric_and_kidless_keys() -> None:
    doc = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, {**DEV.jwks()["keys"][0], "kid": None},
                    DEV.jwks()["keys"][0]]}
    assert list(parse_jwks(doc)) == [DEV.kid]


def test_jwks_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = DEV.write_jwks(tmp_path / "jwks.json")
    source = JWKSFile(path, check_interval=0)
    assert list(asyncio.run(source.keys(DEV.kid))) == [DEV.kid]
    other = DevIssuer()
    other.write_jwks(path)
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert list(asyncio.run(source.keys(other.kid))) == [other.kid]


def test_unreadable_jwks_file_at_start_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AttestationUnavailable):
        asyncio.run(JWKSFile(tmp_path / "missing.json").keys(None))


def test_jwks_file_keeps_the_last_good_keys_when_rewritten_badly(tmp_path: Path) -> None:
    path = DEV.write_jwks(tmp_path / "jwks.json")
    source = JWKSFile(path, check_interval=0)
    asyncio.run(source.keys(DEV.kid))
    path.write_text("{not json")
    assert list(asyncio.run(source.keys(DEV.kid))) == [DEV.kid]


class CountingJWKS:
    def __init__(self, doc: dict[str, Any], status: int = 200) -> None:
        self.doc, self.status, self.calls = doc, status, 0

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.calls += 1
            return httpx.Response(self.status, json=self.doc)
        return httpx.MockTransport(handle)


def test_jwks_url_is_cached() -> None:
    server = CountingJWKS(DEV.jwks())

    async def go() -> None:
        source = JWKSURL("http://api/openid/v1/jwks", client=httpx.AsyncClient(transport=server.transport()))
        for _ in range(5):
            await source.keys(DEV.kid)
    asyncio.run(go())
    assert server.calls == 1


def test_jwks_url_refetches_on_unknown_kid_at_most_once_per_interval() -> None:
    server = CountingJWKS(DEV.jwks())

    async def go() -> None:
        source = JWKSURL("http://api/openid/v1/jwks", client=httpx.AsyncClient(transport=server.transport()),
                         min_refetch=60)
        await source.keys(DEV.kid)
        for _ in range(5):
            await source.keys("rotated-kid")
    asyncio.run(go())
    assert server.calls == 1


def test_jwks_url_picks_up_a_rotated_key_after_the_interval() -> None:
    server = CountingJWKS(DEV.jwks())
    other = DevIssuer()

    async def go() -> list[str]:
        source = JWKSURL("http://api/openid/v1/jwks", client=httpx.AsyncClient(transport=server.transport()),
                         min_refetch=0)
        await source.keys(DEV.kid)
        server.doc = other.jwks()
        return list(await source.keys(other.kid))
    assert asyncio.run(go()) == [other.kid]


def test_jwks_url_unreachable_without_keys_is_unavailable() -> None:
    server = CountingJWKS({}, status=500)

    async def go() -> None:
        source = JWKSURL("http://api/openid/v1/jwks", client=httpx.AsyncClient(transport=server.transport()))
        await source.keys(DEV.kid)
    with pytest.raises(AttestationUnavailable):
        asyncio.run(go())


class FakePods:
    def __init__(self, pod: PodInfo | None) -> None:
        self.pod = pod

    async def read_pod(self, namespace: str, name: str) -> PodInfo | None:
        return self.pod


SUBJECT = Subject(sub="system:serviceaccount:payments:api", issuer="i", namespace="payments", service_account="api",
                  pod=PodInfo(name="p", uid="u"))


def test_bound_pod_gone_is_refused() -> None:
    with pytest.raises(AttestationError, match="no longer exists"):
        asyncio.run(bind_pod(SUBJECT, FakePods(None)))


def test_bound_pod_with_another_uid_is_refused() -> None:
    with pytest.raises(AttestationError, match="uid"):
        asyncio.run(bind_pod(SUBJECT, FakePods(PodInfo(name="p", uid="other"))))


def test_bound_pod_labels_and_images_fill_the_subject() -> None:
    live = PodInfo(name="p", uid="u", labels={"app": "api"}, images=("r/api@sha256:00",))
    assert asyncio.run(bind_pod(SUBJECT, FakePods(live))).pod == live


class StaticKeys:
    async def keys(self, kid: str | None) -> Any:
        return KEYS

    async def close(self) -> None:
        return None


def test_jwks_attestor_with_pod_lookup_refuses_a_gone_pod() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, FakePods(None))
    with pytest.raises(AttestationError, match="no longer exists"):
        asyncio.run(attestor.attest(DEV.mint("payments", "api", pod=PodRef("p", "u"))))


def test_jwks_attestor_with_pod_lookup_passes_labels_and_images_on() -> None:
    live = PodInfo(name="p", uid="u", labels={"app": "api"}, images=("r/api@sha256:00",))
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, FakePods(live))
    assert asyncio.run(attestor.attest(DEV.mint("payments", "api", pod=PodRef("p", "u")))).pod == live


class FakeAuthAPI:
    def __init__(self, status: Any = None, error: Exception | None = None) -> None:
        self.status, self.error, self.bodies = status, error, []  # type: ignore[var-annotated]

    def create_token_review(self, body: Any, **kwargs: Any) -> Any:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return SimpleNamespace(status=self.status)


def review_attestor(api: FakeAuthAPI, pods: Any = None) -> TokenReviewAttestor:
    from kubernetes import client

    attestor = TokenReviewAttestor(client.ApiClient(), AUD, pods)
    attestor._auth = api  # type: ignore[assignment]
    return attestor


def authenticated(username: str = "system:serviceaccount:payments:api", audiences: Any = (AUD,)) -> Any:
    extra = {"authentication.kubernetes.io/pod-name": ["p"], "authentication.kubernetes.io/pod-uid": ["u"]}
    return SimpleNamespace(authenticated=True, audiences=list(audiences), error=None,
                           user=SimpleNamespace(username=username, extra=extra))


def test_token_review_asks_with_the_subject_audience_and_reads_the_pod() -> None:
    api = FakeAuthAPI(authenticated())
    token = DEV.mint("payments", "api")
    subject = asyncio.run(review_attestor(api).attest(token))
    assert api.bodies[0].spec.audiences == [AUD]
    assert subject == Subject(sub="system:serviceaccount:payments:api", issuer=DEV.issuer, namespace="payments",
                              service_account="api", pod=PodInfo(name="p", uid="u"),
                              issued_at=jwt.decode(token, options={"verify_signature": False})["iat"])


def test_token_review_refuses_a_subject_token_older_than_the_max_age() -> None:
    attestor = review_attestor(FakeAuthAPI(authenticated()))
    attestor.max_age = 86400
    old = DEV.mint("payments", "api", now=time.time() - 2 * 86400, ttl=3 * 86400)
    with pytest.raises(AttestationError, match="max-subject-token-age"):
        asyncio.run(attestor.attest(old))


def test_token_review_not_authenticated_is_refused_without_echoing_the_api_server() -> None:
    api = FakeAuthAPI(SimpleNamespace(authenticated=False, error="token has been invalidated", audiences=None,
                                      user=None))
    with pytest.raises(TokenReviewRefused, match="did not authenticate") as refused:
        asyncio.run(review_attestor(api).attest("t"))
    assert "invalidated" not in str(refused.value) and "invalidated" in (refused.value.detail or "")


def test_a_refused_token_is_not_reviewed_again_for_a_while() -> None:
    api = FakeAuthAPI(SimpleNamespace(authenticated=False, error="bad", audiences=None, user=None))
    attestor = review_attestor(api)
    for _ in range(3):
        with pytest.raises(AttestationError):
            asyncio.run(attestor.attest("garbage"))
    assert len(api.bodies) == 1


def test_token_review_without_our_audience_is_refused() -> None:
    with pytest.raises(AttestationError, match="audiences"):
        asyncio.run(review_attestor(FakeAuthAPI(authenticated(audiences=["other"]))).attest("t"))


def test_token_review_of_a_user_that_is_not_a_service_account_is_refused() -> None:
    with pytest.raises(AttestationError, match="not a ServiceAccount"):
        asyncio.run(review_attestor(FakeAuthAPI(authenticated(username="alice"))).attest("t"))


def test_token_review_with_api_unreachable_is_unavailable() -> None:
    import urllib3

    api = FakeAuthAPI(error=urllib3.exceptions.MaxRetryError(None, "/", "refused"))  # type: ignore[arg-type]
    with pytest.raises(AttestationUnavailable):
        asyncio.run(review_attestor(api).attest("t"))


def test_token_review_forbidden_is_refused() -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(AttestationError):
        asyncio.run(review_attestor(FakeAuthAPI(error=ApiException(status=403, reason="Forbidden"))).attest("t"))


class SwappableKeys:
    def __init__(self, keys: Any) -> None:
        self.current = keys

    async def keys(self, kid: str | None) -> Any:
        return self.current

    async def close(self) -> None:
        return None


def test_a_verified_token_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import pdp.attestation.verify as attestation

    calls: list[str] = []
    real = attestation.verify_jwt

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("verify")
        return real(*args, **kwargs)
    monkeypatch.setattr(attestation, "verify_jwt", counting)
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD)
    token = DEV.mint("payments", "api")
    first = asyncio.run(attestor.attest(token))
    assert asyncio.run(attestor.attest(token)) == first
    assert calls == ["verify"]


def test_a_remembered_token_still_expires() -> None:
    cache = VerifiedTokens()
    key = KEYS[DEV.kid]
    cache.put("t", DEV.kid, key, exp=1000.0, subject=SUBJECT)
    assert cache.get("t", KEYS, now=999.0) == SUBJECT
    assert cache.get("t", KEYS, now=1000.0 + 60) is None


def test_a_remembered_token_is_refused_once_its_key_leaves_the_jwks() -> None:
    source = SwappableKeys(KEYS)
    attestor = JWKSAttestor(source, DEV.issuer, AUD)
    token = DEV.mint("payments", "api")
    asyncio.run(attestor.attest(token))
    source.current = parse_jwks(DevIssuer().jwks())
    with pytest.raises(AttestationError, match="kid"):
        asyncio.run(attestor.attest(token))


def test_the_remembered_tokens_are_bounded() -> None:
    cache = VerifiedTokens(max_entries=2)
    for name in ("a", "b", "c"):
        cache.put(name, DEV.kid, KEYS[DEV.kid], exp=1e12, subject=SUBJECT)
    assert cache.get("a", KEYS, now=0) is None and cache.get("c", KEYS, now=0) == SUBJECT


def test_a_subject_token_older_than_the_max_age_is_refused() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, max_age=86400)
    old = DEV.mint("payments", "api", now=time.time() - 2 * 86400, ttl=3 * 86400)
    with pytest.raises(AttestationError, match="max-subject-token-age"):
        asyncio.run(attestor.attest(old))


def test_a_subject_token_within_the_max_age_is_accepted() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, max_age=86400)
    recent = DEV.mint("payments", "api", now=time.time() - 3600, ttl=2 * 86400)
    assert asyncio.run(attestor.attest(recent)).sub == "system:serviceaccount:payments:api"


def test_a_remembered_token_is_refused_once_it_outgrows_the_max_age() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, max_age=60)
    token = DEV.mint("payments", "api", now=time.time() - 50, ttl=600)
    asyncio.run(attestor.attest(token))  # remembered now
    attestor.max_age = 30  # the same token, now past the limit: the cache does not skip the check
    with pytest.raises(AttestationError, match=r"issued 5\d s ago"):
        asyncio.run(attestor.attest(token))


def test_a_subject_token_without_iat_is_refused_when_a_max_age_is_set() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, max_age=86400)
    claims = jwt.decode(DEV.mint("payments", "api"), options={"verify_signature": False})
    del claims["iat"]
    token = jwt.encode(claims, DEV._key, algorithm="RS256", headers={"kid": DEV.kid})
    with pytest.raises(AttestationError, match="no iat"):
        asyncio.run(attestor.attest(token))


def test_no_max_age_accepts_an_old_subject_token() -> None:
    attestor = JWKSAttestor(StaticKeys(), DEV.issuer, AUD, max_age=None)
    old = DEV.mint("payments", "api", now=time.time() - 30 * 86400, ttl=31 * 86400)
    assert asyncio.run(attestor.attest(old)).namespace == "payments"
