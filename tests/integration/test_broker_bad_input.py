"""Every way a token request can be wrong gets the RFC error of docs/contract.md §2 from a real
broker process, never a 500 and never a token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import DevIssuer
from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES / "grant").url)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(broker: BrokerHandle, **changes: Any) -> dict[str, Any]:
    token = broker.mint("payments", "api")
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return claims


def form(subject_token: str = "x", **changes: str) -> dict[str, str]:
    data = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
            "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-db"}
    data.update(changes)
    return data


def assert_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert "access_token" not in body
    assert r.headers["cache-control"] == "no-store"
    return body


@pytest.mark.parametrize("missing", ["grant_type", "subject_token", "subject_token_type", "audience"])
def test_missing_parameter_is_invalid_request_naming_it(broker: BrokerHandle, missing: str) -> None:
    data = form(broker.mint("payments", "api"))
    del data[missing]
    body = assert_error(httpx.post(f"{broker.url}/token", data=data), 400, "invalid_request")
    assert missing in body["error_description"]


def test_other_grant_type_is_unsupported_grant_type(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), grant_type="client_credentials"))
    assert_error(r, 400, "unsupported_grant_type")


def test_wrong_subject_token_type_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"),
                                                    subject_token_type="urn:ietf:params:oauth:token-type:saml2"))
    assert_error(r, 400, "invalid_request")


def test_two_audiences_are_invalid_request(broker: BrokerHandle) -> None:
    body = (f"grant_type={GRANT_TYPE_TOKEN_EXCHANGE}&subject_token={broker.mint('payments', 'api')}"
            f"&subject_token_type={TOKEN_TYPE_JWT}&audience=orders-db&audience=billing")
    r = httpx.post(f"{broker.url}/token", content=body,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "exactly one audience" in assert_error(r, 400, "invalid_request")["error_description"]


def test_space_separated_audiences_are_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), audience="orders-db billing"))
    assert_error(r, 400, "invalid_request")


def test_one_megabyte_subject_token_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form("a" * (1024 * 1024)))
    assert_error(r, 400, "invalid_request")


def test_non_utf8_garbage_body_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", content=b"\xff\xfe\x00garbage=\xc3\x28&audience=%ff%fe",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 400, "invalid_request")


def test_percent_encoded_invalid_utf8_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", content=b"grant_type=%ff%fe",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 400, "invalid_request")


def test_json_body_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", json=form(broker.mint("payments", "api")))
    assert_error(r, 400, "invalid_request")


def test_malformed_scope_is_invalid_scope(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), scope='read "quoted"\\'))
    assert_error(r, 400, "invalid_scope")


@pytest.mark.parametrize("ttl", ["0", "-5", "ten", "1.5", "99999999999999"])
def test_malformed_requested_ttl_is_invalid_request(broker: BrokerHandle, ttl: str) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), requested_ttl=ttl))
    assert_error(r, 400, "invalid_request")


def test_token_signed_by_a_foreign_key_under_a_known_kid_is_invalid_grant(broker: BrokerHandle) -> None:
    foreign = DevIssuer(broker.issuer.issuer)
    token = jwt.encode(claims_of(broker), foreign._key, algorithm="RS256", headers={"kid": broker.issuer.kid})
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "signature" in body["error_description"]


def test_token_signed_by_a_foreign_key_with_its_own_kid_is_invalid_grant(broker: BrokerHandle) -> None:
    token = DevIssuer(broker.issuer.issuer).mint("payments", "api")
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "kid" in body["error_description"]


def test_alg_none_is_invalid_grant(broker: BrokerHandle) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": broker.issuer.kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_of(broker)).encode())}."
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "alg" in body["error_description"]


def test_hs256_keyed_with_the_public_key_is_invalid_grant(broker: BrokerHandle) -> None:
    public_pem = broker.issuer._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": broker.issuer.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_of(broker)).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(f"{signing_input}.{b64(mac)}")),
                        400, "invalid_grant")
    assert "HS256" in body["error_description"]


def test_es256_header_over_the_rsa_key_is_invalid_grant(broker: BrokerHandle) -> None:
    token = jwt.encode(claims_of(broker), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                       headers={"kid": broker.issuer.kid})
    assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")


def test_expired_subject_token_is_invalid_grant(broker: BrokerHandle) -> None:
    token = broker.mint("payments", "api", now=time.time() - 3600, ttl=600)
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "expired" in body["error_description"]


def test_not_yet_valid_subject_token_is_invalid_grant(broker: BrokerHandle) -> None:
    token = broker.mint("payments", "api", now=time.time() + 3600)
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "not yet valid" in body["error_description"]


def test_wrong_issuer_is_invalid_grant(broker: BrokerHandle) -> None:
    same_key_other_issuer = DevIssuer("https://evil.example", broker.issuer.private_pem())
    token = same_key_other_issuer.mint("payments", "api")
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "issuer" in body["error_description"]


def test_wrong_audience_is_invalid_grant(broker: BrokerHandle) -> None:
    token = broker.mint("payments", "api", audience="https://kubernetes.default.svc")
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "audience" in body["error_description"]


def test_token_without_kubernetes_claims_is_invalid_grant(broker: BrokerHandle) -> None:
    claims = claims_of(broker)
    del claims["kubernetes.io"]
    token = jwt.encode(claims, broker.issuer._key, algorithm="RS256", headers={"kid": broker.issuer.kid})
    assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")


def test_garbage_subject_token_is_invalid_grant(broker: BrokerHandle) -> None:
    assert_error(httpx.post(f"{broker.url}/token", data=form("not.a.jwt")), 400, "invalid_grant")


def test_refused_subject_token_is_audited_as_denied(broker: BrokerHandle) -> None:
    token = broker.mint("payments", "api", now=time.time() - 3600, ttl=600)
    decision_id = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")["decision_id"]
    r = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": "denied", "limit": 1000},
                  headers=broker.admin_headers())
    rec = next(x for x in r.json()["records"] if x["decision_id"] == decision_id)
    assert rec["details"]["error"] == "invalid_grant" and "expired" in rec["details"]["error_description"]


FIELDS = ["grant_type", "subject_token", "subject_token_type", "audience", "scope", "requested_ttl", "resource",
          "actor_token"]
text = st.one_of(st.text(max_size=60), st.sampled_from([GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, "orders-db",
                                                        "read write", "60", ""]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.lists(st.tuples(st.sampled_from(FIELDS) | st.text(max_size=10), text), max_size=8),
       raw=st.none() | st.binary(max_size=300),
       content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain", ""]))
def test_fuzzed_token_requests_never_get_a_500_or_a_token(broker: BrokerHandle, fields: list[tuple[str, str]],
                                                          raw: bytes | None, content_type: str) -> None:
    if raw is None:
        body = httpx.QueryParams(fields).__str__().encode()
    else:
        body = raw
    r = httpx.post(f"{broker.url}/token", content=body, headers={"Content-Type": content_type}, timeout=10)
    assert r.status_code in (400, 403, 503), (r.status_code, r.text)
    doc = r.json()
    assert doc["error"] in {"invalid_request", "unsupported_grant_type", "invalid_scope", "invalid_grant",
                            "access_denied", "temporarily_unavailable"}
    assert "access_token" not in doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scope=st.text(max_size=40), audience=st.text(max_size=40), ttl=st.text(max_size=12))
def test_fuzzed_parameters_with_a_valid_subject_token_never_get_a_500(broker: BrokerHandle, scope: str,
                                                                     audience: str, ttl: str) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), scope=scope, audience=audience,
                                                    requested_ttl=ttl), timeout=10)
    assert r.status_code in (200, 400, 403), (r.status_code, r.text)
    if r.status_code == 200:
        granted = set(r.json()["scope"].split())
        assert granted <= set(scope.split(" "))


@pytest.mark.parametrize("where", ["kid", "alg", "typ"])
def test_nul_characters_in_a_token_header_are_invalid_grant_not_a_store_error(broker: BrokerHandle,
                                                                               where: str) -> None:
    # the refusal quotes what was wrong, and its audit record must still be writable (PostgreSQL
    # cannot store NUL): the client gets 400 invalid_grant, never 503 from a failed audit write
    header = {"alg": "RS256", "typ": "JWT", "kid": broker.issuer.kid}
    header[where] = "a\x00b"
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_of(broker)).encode())}.c2ln"
    assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")


def test_nul_characters_in_verified_looking_claims_are_invalid_grant(broker: BrokerHandle) -> None:
    token = jwt.encode(claims_of(broker, sub="system:serviceaccount:pay\x00ments:api"),
                       DevIssuer(broker.issuer.issuer)._key, algorithm="RS256", headers={"kid": "k\x00"})
    assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")


def test_http_basic_client_credentials_are_invalid_client_with_a_basic_challenge(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api")), auth=("client", "secret"))
    body = assert_error(r, 401, "invalid_client")
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert "Basic" in body["error_description"]


def test_a_malformed_authorization_header_is_invalid_client(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api")),
                   headers={"Authorization": "Basic !!!not-base64"})
    assert_error(r, 401, "invalid_client")


@pytest.mark.parametrize("field", ["client_secret", "client_assertion"])
def test_client_credentials_in_the_body_are_invalid_client(broker: BrokerHandle, field: str) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), client_id="c", **{field: "s"}))
    body = assert_error(r, 401, "invalid_client")
    assert field in body["error_description"]


def test_a_client_id_alone_is_a_public_client_and_is_accepted(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), client_id="payments-api",
                                                     scope="read"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("fields", "named"), [
    ({"actor_token": "x"}, "actor_token_type"),
    ({"actor_token_type": TOKEN_TYPE_JWT}, "without an actor_token"),
    ({"actor_token": "x", "actor_token_type": TOKEN_TYPE_JWT}, "delegation is not supported"),
])
def test_actor_tokens_are_invalid_request(broker: BrokerHandle, fields: dict[str, str], named: str) -> None:
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), **fields)),
                        400, "invalid_request")
    assert named in body["error_description"]


@pytest.mark.parametrize("asked", [TOKEN_TYPE_JWT, "urn:ietf:params:oauth:token-type:access_token"])
def test_the_issued_token_type_is_the_one_asked_for(broker: BrokerHandle, asked: str) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), scope="read",
                                                     requested_token_type=asked))
    assert r.status_code == 200, r.text
    assert r.json()["issued_token_type"] == asked


def test_an_unsupported_requested_token_type_is_invalid_request(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"),
                                                     requested_token_type="urn:ietf:params:oauth:token-type:saml2"))
    assert_error(r, 400, "invalid_request")


def test_a_subject_token_with_a_trailing_newline_is_accepted(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api") + "\n", scope="read"))
    assert r.status_code == 200, r.text


def test_a_subject_token_without_kid_says_so(broker: BrokerHandle) -> None:
    claims = claims_of(broker)
    token = jwt.encode(claims, broker.issuer._key, algorithm="RS256")  # no kid header
    body = assert_error(httpx.post(f"{broker.url}/token", data=form(token)), 400, "invalid_grant")
    assert "has no kid" in body["error_description"] and "None" not in body["error_description"]


def test_a_huge_requested_ttl_is_told_the_maximum(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api"), requested_ttl="2147483648"))
    body = assert_error(r, 400, "invalid_request")
    assert "at most 999999999 seconds" in body["error_description"]


def test_a_token_with_no_scope_granted_has_no_scope_field_or_claim(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/token", data=form(broker.mint("payments", "api")))
    assert r.status_code == 200, r.text
    assert "scope" not in r.json()
    assert "scope" not in jwt.decode(r.json()["access_token"], options={"verify_signature": False})


@pytest.mark.parametrize(("method", "path", "status", "error"), [
    ("GET", "/no/such/endpoint", 404, "not_found"), ("GET", "/token", 405, "method_not_allowed")])
def test_unknown_routes_and_methods_answer_json(broker: BrokerHandle, method: str, path: str, status: int,
                                                error: str) -> None:
    r = httpx.request(method, f"{broker.url}{path}")
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == error and r.json()["error_description"]
