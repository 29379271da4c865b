"""RFC 9449 proof checks, one test per check. Proofs are built here with cryptography and
PyJWT directly, not with the module under test, so a shared mistake cannot hide."""

import base64
import hashlib
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jitmesh import dpop

URL = "https://broker.example:8443/token"
NOW = 1_700_000_000.0
WINDOW = 60.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_jwk(key: ec.EllipticCurvePrivateKey, *, private: bool = False) -> dict[str, str]:
    numbers = key.private_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    jwk = {"kty": "EC", "crv": crv, "x": b64(numbers.public_numbers.x.to_bytes(size, "big")),
           "y": b64(numbers.public_numbers.y.to_bytes(size, "big"))}
    if private:
        jwk["d"] = b64(numbers.private_value.to_bytes(size, "big"))
    return jwk


KEY = ec.generate_private_key(ec.SECP256R1())
JWK = ec_jwk(KEY)


def build(claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None, *,
          key: Any = KEY, alg: str = "ES256", drop: tuple[str, ...] = ()) -> str:
    body: dict[str, Any] = {"jti": "j-1", "htm": "POST", "htu": URL, "iat": int(NOW)}
    body.update(claims or {})
    head: dict[str, Any] = {"typ": "dpop+jwt", "jwk": JWK}
    head.update(header or {})
    for name in drop:
        body.pop(name, None)
        head.pop(name, None)
    if "typ" in drop:
        head["typ"] = None  # PyJWT leaves out a typ that is None
    return jwt.encode(body, key, algorithm=alg, headers=head)


def check(proof: str, **kwargs: Any) -> dpop.CheckedProof:
    args: dict[str, Any] = {"htm": "POST", "htu": URL, "now": NOW, "window": WINDOW}
    args.update(kwargs)
    return dpop.check_proof(proof, **args)


def refused(proof: str, check_name: str, **kwargs: Any) -> None:
    with pytest.raises(dpop.ProofError, match=f"^{check_name}:"):
        check(proof, **kwargs)


# --- the helpers ---------------------------------------------------------------------------

def test_thumbprint_matches_rfc_7638_example() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvzq"
        "Y368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0"
        "fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    assert dpop.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_of_ec_key_uses_required_members_in_order() -> None:
    expected = b64(hashlib.sha256(
        ('{"crv":"P-256","kty":"EC","x":"' + JWK["x"] + '","y":"' + JWK["y"] + '"}').encode()).digest())
    assert dpop.thumbprint({**JWK, "kid": "ignored", "use": "sig"}) == expected


def test_access_token_hash_matches_rfc_9449_example() -> None:
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert dpop.access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_public_jwk_of_new_key_is_a_p256_public_key() -> None:
    key = dpop.new_key()
    jwk = dpop.public_jwk(key)
    assert set(jwk) == {"kty", "crv", "x", "y"} and jwk["crv"] == "P-256"
    assert jwk == ec_jwk(key)


@pytest.mark.parametrize(("url", "normal"), [
    ("HTTPS://Broker.Example:443/token", "https://broker.example/token"),
    ("http://broker.example:80", "http://broker.example/"),
    ("http://broker.example:8080/a/%7euser/%2f", "http://broker.example:8080/a/~user/%2F"),
    ("https://broker.example/a/./b/../token?x=1#frag", "https://broker.example/a/token"),
    ("https://[::1]:8443/token", "https://[::1]:8443/token"),
])
def test_normalise_htu(url: str, normal: str) -> None:
    assert dpop.normalise_htu(url) == normal


@pytest.mark.parametrize("url", ["ftp://x/", "/token", "https://user@x/", "https://x:99999/", "https://x/ a"])
def test_normalise_htu_refuses_what_is_no_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        dpop.normalise_htu(url)


def test_proof_made_here_passes_and_names_its_key() -> None:
    key = dpop.new_key()
    proof = dpop.make_proof(key, "GET", "https://api.example/x", access_token="tok", nonce="n1", now=NOW)
    header = jwt.get_unverified_header(proof)
    claims = jwt.decode(proof, key.public_key(), algorithms=["ES256"])
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and "d" not in header["jwk"]
    assert claims["htm"] == "GET" and claims["iat"] == int(NOW) and claims["nonce"] == "n1"
    assert claims["ath"] == b64(hashlib.sha256(b"tok").digest())
    checked = dpop.check_proof(proof, htm="GET", htu="https://api.example/x", now=NOW, window=WINDOW,
                               access_token="tok", jkt=dpop.thumbprint(ec_jwk(key)), nonce="n1")
    assert checked.jkt == dpop.thumbprint(ec_jwk(key)) and checked.iat == int(NOW)


def test_each_proof_made_has_a_fresh_jti() -> None:
    key = dpop.new_key()
    jtis = {jwt.decode(dpop.make_proof(key, "GET", URL), options={"verify_signature": False})["jti"]
            for _ in range(20)}
    assert len(jtis) == 20


# --- RFC 9449 section 4.3, check by check ---------------------------------------------------

def test_valid_proof_passes_with_its_thumbprint() -> None:
    checked = check(build())
    assert checked == dpop.CheckedProof(jkt=dpop.thumbprint(JWK), jti="j-1", iat=NOW)


@pytest.mark.parametrize("proof", ["", "a.b", "a.b.c.d", build() + " ", build() + "," + build(), "x" * 9000])
def test_not_a_single_well_formed_jwt_is_refused(proof: str) -> None:
    refused(proof, "well-formed JWT")


def test_payload_that_is_not_json_is_refused() -> None:
    head = b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": JWK}).encode())
    refused(f"{head}.{b64(b'not json')}.{b64(b'sig')}", "well-formed JWT")


@pytest.mark.parametrize("missing", ["typ", "jwk", "jti", "htm", "htu", "iat"])
def test_missing_required_claim_is_refused(missing: str) -> None:
    refused(build(drop=(missing,)), "required claims")


def test_missing_alg_is_refused() -> None:
    head = b64(json.dumps({"typ": "dpop+jwt", "jwk": JWK}).encode())
    body = b64(json.dumps({"jti": "j", "htm": "POST", "htu": URL, "iat": NOW}).encode())
    refused(f"{head}.{body}.{b64(b'sig')}", "required claims")


def test_wrong_typ_is_refused() -> None:
    refused(build(header={"typ": "JWT"}), "typ")


def test_alg_none_is_refused() -> None:
    head = b64(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": JWK}).encode())
    body = b64(json.dumps({"jti": "j", "htm": "POST", "htu": URL, "iat": NOW}).encode())
    refused(f"{head}.{body}.", "alg")


def test_symmetric_alg_is_refused() -> None:
    refused(build(key="a-shared-secret-of-at-least-32-bytes!!", alg="HS256"), "alg")


def test_signature_by_another_key_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused(build(key=other), "signature")


def test_tampered_payload_is_refused() -> None:
    head, _, sig = build().split(".")
    body = b64(json.dumps({"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(NOW)}).encode())
    refused(f"{head}.{body}.{sig}", "signature")


def test_private_key_in_jwk_is_refused() -> None:
    refused(build(header={"jwk": ec_jwk(KEY, private=True)}), "jwk")


def test_jwk_on_a_curve_other_than_the_alg_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    refused(build(header={"jwk": ec_jwk(p384)}), "jwk")


def test_other_asymmetric_algs_pass() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}
    assert check(build(header={"jwk": ed_jwk}, key=ed, alg="EdDSA")).jkt == dpop.thumbprint(ed_jwk)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = rsa_key.public_key().public_numbers()
    rsa_jwk = {"kty": "RSA", "n": b64(numbers.n.to_bytes(256, "big")), "e": b64(numbers.e.to_bytes(3, "big"))}
    check(build(header={"jwk": rsa_jwk}, key=rsa_key, alg="PS256"))


def test_wrong_htm_is_refused() -> None:
    refused(build({"htm": "GET"}), "htm")


def test_htm_is_case_sensitive() -> None:
    refused(build({"htm": "post"}), "htm")


def test_wrong_htu_is_refused() -> None:
    refused(build({"htu": "https://broker.example:8443/other"}), "htu")


def test_htu_on_another_host_is_refused() -> None:
    refused(build({"htu": "https://evil.example:8443/token"}), "htu")


def test_htu_compares_after_normalisation() -> None:
    check(build({"htu": "HTTPS://BROKER.example:8443/%74oken"}))


def test_query_and_fragment_in_htu_are_ignored_as_rfc_9449_says() -> None:
    check(build({"htu": URL + "?a=1#f"}))
    check(build(), htu=URL + "?b=2")


def test_htu_that_is_not_a_url_is_refused() -> None:
    refused(build({"htu": "not a url"}), "htu")


def test_required_nonce_missing_is_refused() -> None:
    refused(build(), "nonce", nonce="server-nonce")


def test_required_nonce_passes() -> None:
    check(build({"nonce": "server-nonce"}), nonce="server-nonce")


def test_stale_iat_is_refused() -> None:
    refused(build({"iat": int(NOW - WINDOW - 1)}), "iat")


def test_future_iat_beyond_the_skew_is_refused() -> None:
    refused(build({"iat": int(NOW + dpop.CLOCK_SKEW + 2)}), "iat")


def test_iat_within_the_skew_passes() -> None:
    check(build({"iat": int(NOW + dpop.CLOCK_SKEW - 1)}))


def test_iat_that_is_not_a_number_is_refused() -> None:
    refused(build({"iat": "now"}), "iat")


def test_missing_ath_with_a_token_is_refused() -> None:
    refused(build(), "ath", access_token="tok")


def test_wrong_ath_is_refused() -> None:
    refused(build({"ath": b64(hashlib.sha256(b"other").digest())}), "ath", access_token="tok")


def test_right_ath_passes() -> None:
    check(build({"ath": b64(hashlib.sha256(b"tok").digest())}), access_token="tok")


def test_key_other_than_the_bound_one_is_refused() -> None:
    refused(build(), "jkt", jkt=dpop.thumbprint(ec_jwk(ec.generate_private_key(ec.SECP256R1()))))


def test_bound_key_passes() -> None:
    check(build(), jkt=dpop.thumbprint(JWK))


def test_empty_jti_is_refused() -> None:
    refused(build({"jti": ""}), "jti")


# --- replay -------------------------------------------------------------------------------

def test_replay_cache_refuses_a_jti_seen_within_the_window() -> None:
    cache = dpop.ReplayCache(window=WINDOW)
    assert cache.remember("a", NOW)
    assert not cache.remember("a", NOW + WINDOW)


def test_replay_cache_forgets_a_jti_after_the_window_and_skew() -> None:
    cache = dpop.ReplayCache(window=WINDOW)
    cache.remember("a", NOW)
    assert cache.remember("a", NOW + WINDOW + dpop.CLOCK_SKEW + 1)


def test_full_replay_cache_refuses_rather_than_forgets() -> None:
    cache = dpop.ReplayCache(window=WINDOW, max_entries=2)
    cache.remember("a", NOW)
    cache.remember("b", NOW)
    with pytest.raises(dpop.ReplayCacheFull):
        cache.remember("c", NOW)
    assert not cache.remember("a", NOW)
    assert cache.remember("c", NOW + WINDOW + dpop.CLOCK_SKEW + 1) and len(cache) == 1


def test_make_proof_defaults_to_the_current_time() -> None:
    proof = dpop.make_proof(dpop.new_key(), "POST", URL)
    assert abs(jwt.decode(proof, options={"verify_signature": False})["iat"] - time.time()) < 5


def test_what_a_proof_says_is_shown_in_errors_as_bounded_ascii() -> None:
    with pytest.raises(dpop.ProofError) as info:
        check(build({"htm": "GET€\r\n" + "x" * 500}))
    message = str(info.value)
    assert message.isascii() and "\r" not in message and len(message) < 300
