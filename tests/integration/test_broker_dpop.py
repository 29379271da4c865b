"""DPoP at the broker's token endpoint (RFC 9449), against real broker and OPA processes.
Proofs are built here with cryptography and PyJWT, independently of jitmesh.dpop, and issued
tokens are verified with joserfc from the broker's jwks_uri."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import DevIssuer, PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import ReplicaLauncher, introspect

POLICIES = Path(__file__).parent / "dpop_policies"
POD = PodRef("api-1", "11111111-2222-4333-8444-555555555555")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Holder:
    """A client's P-256 key, its public JWK and RFC 7638 thumbprint, computed by hand."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.private_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64(numbers.public_numbers.x.to_bytes(32, "big")),
                    "y": b64(numbers.public_numbers.y.to_bytes(32, "big"))}
        self.private_jwk = {**self.jwk, "d": b64(numbers.private_value.to_bytes(32, "big"))}
        canonical = '{"crv":"P-256","kty":"EC","x":"' + self.jwk["x"] + '","y":"' + self.jwk["y"] + '"}'
        self.jkt = b64(hashlib.sha256(canonical.encode()).digest())

    def proof(self, htu: str, htm: str = "POST", *, claims: dict[str, Any] | None = None,
              header: dict[str, Any] | None = None, key: Any = None, alg: str = "ES256") -> str:
        body: dict[str, Any] = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
        body.update(claims or {})
        head: dict[str, Any] = {"typ": "dpop+jwt", "jwk": self.jwk}
        head.update(header or {})
        return jwt.encode(body, key if key is not None else self.key, algorithm=alg, headers=head)


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES).url)


def token_endpoint(broker: BrokerHandle) -> str:
    doc = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server", timeout=10).json()
    return str(doc["token_endpoint"])


def exchange(broker: BrokerHandle, *proofs: str, audience: str = "orders-db") -> httpx.Response:
    data = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": broker.mint("payments", "api", pod=POD),
            "subject_token_type": TOKEN_TYPE_JWT, "audience": audience, "scope": "read"}
    return httpx.post(f"{broker.url}/token", data=data, headers=[("DPoP", p) for p in proofs], timeout=10)


def refused_proof(r: httpx.Response, check: str) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_dpop_proof"
    assert f"check of {check}" in r.json()["error_description"], r.json()["error_description"]


def test_discovery_lists_the_dpop_signing_algs(broker: BrokerHandle) -> None:
    doc = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server", timeout=10).json()
    assert "ES256" in doc["dpop_signing_alg_values_supported"]
    assert not {"none", "HS256"} & set(doc["dpop_signing_alg_values_supported"])


def test_exchange_with_a_proof_issues_a_token_bound_to_its_key(broker: BrokerHandle) -> None:
    holder = Holder()
    r = exchange(broker, holder.proof(token_endpoint(broker)))
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    keys = KeySet.import_key_set(httpx.get(f"{broker.url}/jwks", timeout=10).json())
    verified = jose_jwt.decode(r.json()["access_token"], keys, algorithms=["ES256"])
    assert verified.header["typ"] == "at+jwt"
    assert verified.claims["cnf"] == {"jkt": holder.jkt}


def test_exchange_without_a_proof_stays_bearer(broker: BrokerHandle) -> None:
    r = exchange(broker)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer"
    assert "cnf" not in jwt.decode(r.json()["access_token"], options={"verify_signature": False})


def test_introspection_returns_cnf_of_a_bound_token(broker: BrokerHandle) -> None:
    holder = Holder()
    token = exchange(broker, holder.proof(token_endpoint(broker))).json()["access_token"]
    doc = introspect(broker, token)
    assert doc["active"] is True and doc["cnf"] == {"jkt": holder.jkt} and doc["token_type"] == "DPoP"


def test_the_policy_sees_the_proof_key_and_the_audit_records_it(broker: BrokerHandle) -> None:
    holder = Holder()
    decision_id = exchange(broker, holder.proof(token_endpoint(broker))).json()["decision_id"]
    records = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": "issued", "limit": 1000},
                        headers=broker.admin_headers(), timeout=10).json()["records"]
    (record,) = [r for r in records if r["decision_id"] == decision_id]
    assert record["details"]["dpop_jkt"] == holder.jkt
    assert record["details"]["input"]["request"]["dpop"] == {"jkt": holder.jkt}


def test_a_query_in_htu_is_ignored_as_rfc_9449_says(broker: BrokerHandle) -> None:
    r = exchange(broker, Holder().proof(token_endpoint(broker) + "?x=1"))
    assert r.status_code == 200, r.text


def test_htu_compares_after_normalisation(broker: BrokerHandle) -> None:
    url = token_endpoint(broker).replace("http://", "HTTP://").replace("/token", "/%74oken")
    assert exchange(broker, Holder().proof(url)).status_code == 200


CASES: dict[str, tuple[str, Callable[[Holder, str], str]]] = {
    "wrong typ": ("typ", lambda h, u: h.proof(u, header={"typ": "JWT"})),
    "alg none": ("alg", lambda h, u: unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": h.jwk},
                                              {"jti": "j", "htm": "POST", "htu": u, "iat": int(time.time())})),
    "HS256": ("alg", lambda h, u: h.proof(u, key="a-shared-secret-that-is-long-enough!", alg="HS256")),
    "private key in jwk": ("jwk", lambda h, u: h.proof(u, header={"jwk": h.private_jwk})),
    "wrong htm": ("htm", lambda h, u: h.proof(u, htm="GET")),
    "wrong htu": ("htu", lambda h, u: h.proof(u.replace("/token", "/revoke"))),
    "stale iat": ("iat", lambda h, u: h.proof(u, claims={"iat": int(time.time()) - 600})),
    "future iat": ("iat", lambda h, u: h.proof(u, claims={"iat": int(time.time()) + 600})),
    "bad signature": ("signature", lambda h, u: h.proof(u, key=ec.generate_private_key(ec.SECP256R1()))),
    "null jti": ("jti", lambda h, u: h.proof(u, claims={"jti": None})),
    "missing iat": ("required claims", lambda h, u: unsigned({"typ": "dpop+jwt", "alg": "ES256", "jwk": h.jwk},
                                                             {"jti": "j", "htm": "POST", "htu": u})),
    "not a JWT": ("well-formed JWT", lambda h, u: "not-a-jwt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_proof_failing_a_check_is_invalid_dpop_proof_naming_it(broker: BrokerHandle, case: str) -> None:
    check, build = CASES[case]
    refused_proof(exchange(broker, build(Holder(), token_endpoint(broker))), check)


def test_a_replayed_proof_is_refused(broker: BrokerHandle) -> None:
    proof = Holder().proof(token_endpoint(broker))
    assert exchange(broker, proof).status_code == 200
    again = exchange(broker, proof)
    refused_proof(again, "jti")
    records = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": "denied", "limit": 1000},
                        headers=broker.admin_headers(), timeout=10).json()["records"]
    (record,) = [r for r in records if r["decision_id"] == again.json()["decision_id"]]
    assert record["details"]["error"] == "invalid_dpop_proof"


def test_two_dpop_headers_are_refused(broker: BrokerHandle) -> None:
    holder, url = Holder(), token_endpoint(broker)
    r = exchange(broker, holder.proof(url), holder.proof(url))
    assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text
    assert "DPoP headers" in r.json()["error_description"]


def test_an_audience_requiring_dpop_refuses_a_request_without_a_proof(broker: BrokerHandle) -> None:
    r = exchange(broker, audience="bound-api")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert "this audience requires DPoP" in r.json()["error_description"]


def test_an_audience_requiring_dpop_issues_with_a_proof(broker: BrokerHandle) -> None:
    r = exchange(broker, Holder().proof(token_endpoint(broker)), audience="bound-api")
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"


@pytest.fixture
def replicas(make_opa: Callable[..., Any], tmp_path: Path,
             postgres_url: str) -> Iterator[tuple[BrokerHandle, BrokerHandle]]:
    launcher = ReplicaLauncher(tmp_path, issuer_url="http://jitmesh-broker.jitmesh.svc:8080")
    opa = make_opa(POLICIES)
    dev = DevIssuer()
    yield launcher.replica(opa.url, postgres_url, dev), launcher.replica(opa.url, postgres_url, dev)
    launcher.stop_all()


@pytest.mark.postgres
def test_a_proof_spent_at_one_replica_is_refused_by_another_on_the_same_postgresql(
        replicas: tuple[BrokerHandle, BrokerHandle]) -> None:
    a, b = replicas
    proof = Holder().proof(token_endpoint(a))
    assert token_endpoint(a) == token_endpoint(b) == "http://jitmesh-broker.jitmesh.svc:8080/token"
    assert exchange(a, proof).status_code == 200
    refused_proof(exchange(b, proof), "jti")
