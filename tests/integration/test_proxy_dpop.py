"""DPoP at `jitmesh proxy` (RFC 9449 section 7) with a real broker, OPA, upstream and nginx:
a token bound at the broker is accepted with a proof of its key for this request and refused
otherwise. Proofs are built here with cryptography and PyJWT, not with jitmesh.dpop."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream
from tests.integration.test_proxy_nginx import nginx_front  # noqa: F401 (a fixture)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Client:
    """A workload's P-256 key and the proofs it signs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        pub = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64(pub.x.to_bytes(32, "big")),
                    "y": b64(pub.y.to_bytes(32, "big"))}

    def proof(self, htm: str, htu: str, token: str | None = None, **claims: Any) -> str:
        body: dict[str, Any] = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token is not None:
            body["ath"] = b64(hashlib.sha256(token.encode()).digest())
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})

    def bound_token(self, broker: BrokerHandle) -> str:
        data = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": broker.mint("demo", "demo-app"),
                "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-api", "scope": "read",
                "requested_ttl": "120"}
        r = httpx.post(f"{broker.url}/token", data=data, headers={"DPoP": self.proof("POST", f"{broker.url}/token")},
                       timeout=10)
        assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text
        return str(r.json()["access_token"])


@pytest.fixture
def env(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> dict[str, Any]:
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    proxy = make_proxy(broker, ["orders-api"], upstream=upstream.url, opa_url=opa.url)
    client = Client()
    return {"broker": broker, "proxy": proxy, "client": client, "token": client.bound_token(broker)}


def call(env: dict[str, Any], path: str = "/orders/42", *, scheme: str = "DPoP", proof: str | None = None,
         **headers: str) -> httpx.Response:
    sent = {"Authorization": f"{scheme} {env['token']}", **headers}
    if proof is not None:
        sent["DPoP"] = proof
    return httpx.get(env["proxy"].url + path, headers=sent, timeout=10)


def challenge(r: httpx.Response, error: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith(f'DPoP realm="jitmesh", error="{error}"')
    assert 'algs="' in r.headers["www-authenticate"]


def test_a_bound_token_with_a_proof_reaches_the_upstream_without_token_or_proof(env: dict[str, Any]) -> None:
    url = env["proxy"].url + "/orders/42?x=1"
    r = call(env, "/orders/42?x=1", proof=env["client"].proof("GET", url, env["token"]))
    assert r.status_code == 200, r.text
    names = {k for k, _ in r.json()["headers"]}
    assert not names & {"authorization", "dpop"}
    assert dict(r.json()["headers"])["x-jitmesh-subject"] == "system:serviceaccount:demo:demo-app"


def test_the_proof_names_the_host_the_client_sent_as_a_client_behind_a_service_does(env: dict[str, Any]) -> None:
    htu = "http://orders-api.shop.svc:8080/orders/42"
    r = call(env, proof=env["client"].proof("GET", htu, env["token"]), Host="orders-api.shop.svc:8080")
    assert r.status_code == 200, r.text


def test_a_proof_without_ath_is_refused(env: dict[str, Any]) -> None:
    r = call(env, proof=env["client"].proof("GET", env["proxy"].url + "/orders/42"))
    challenge(r, "invalid_dpop_proof")
    assert "ath" in r.json()["error_description"]


def test_a_proof_with_a_wrong_ath_is_refused(env: dict[str, Any]) -> None:
    r = call(env, proof=env["client"].proof("GET", env["proxy"].url + "/orders/42", "another-token"))
    challenge(r, "invalid_dpop_proof")


def test_a_proof_for_another_path_is_refused(env: dict[str, Any]) -> None:
    r = call(env, proof=env["client"].proof("GET", env["proxy"].url + "/admin", env["token"]))
    challenge(r, "invalid_dpop_proof")


def test_a_bound_token_presented_as_bearer_is_refused(env: dict[str, Any]) -> None:
    r = call(env, scheme="Bearer", proof=env["client"].proof("GET", env["proxy"].url + "/orders/42", env["token"]))
    challenge(r, "invalid_token")


def test_a_bound_token_without_a_proof_is_refused(env: dict[str, Any]) -> None:
    challenge(call(env), "invalid_dpop_proof")


def test_a_replayed_proof_is_refused(env: dict[str, Any]) -> None:
    proof = env["client"].proof("GET", env["proxy"].url + "/orders/42", env["token"])
    assert call(env, proof=proof).status_code == 200
    r = call(env, proof=proof)
    challenge(r, "invalid_dpop_proof")
    assert "jti" in r.json()["error_description"]


def test_a_proof_by_another_key_is_refused(env: dict[str, Any]) -> None:
    r = call(env, proof=Client().proof("GET", env["proxy"].url + "/orders/42", env["token"]))
    challenge(r, "invalid_dpop_proof")


def test_nginx_auth_request_checks_the_proof_against_the_original_request(
        nginx_front: dict[str, Any]) -> None:  # noqa: F811 (the fixture)
    client = Client()
    token = client.bound_token(nginx_front["broker"])
    url = nginx_front["url"] + "/orders/5"
    ok = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": client.proof("GET", url, token)})
    assert ok.status_code == 200, ok.text
    assert "dpop" not in {k for k, _ in ok.json()["headers"]}
    wrong = httpx.get(url, headers={"Authorization": f"DPoP {token}",
                                    "DPoP": client.proof("GET", nginx_front["url"] + "/orders/6", token)})
    assert wrong.status_code == 401
