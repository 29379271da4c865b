"""The broker as standard OAuth clients see it, each driven by a third-party library against a
real broker: authlib for discovery (RFC 8414), token exchange (RFC 8693), revocation (RFC 7009)
and introspection (RFC 7662); joserfc and PyJWT's PyJWKClient verifying issued tokens from
`jwks_uri` alone; httpx-sse subscribing to the revocation events."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from httpx_sse import connect_sse
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib announces a successor of its httpx integration
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

POLICIES = Path(__file__).parent / "policies"
POD = PodRef("api-1", "11111111-2222-4333-8444-555555555555")


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES / "grant").url)


@pytest.fixture
def client(broker: BrokerHandle) -> Iterator[OAuth2Client]:
    # a public client: the subject token says who is asking, so no client authentication
    with OAuth2Client(client_id="payments-api", token_endpoint_auth_method="none") as c:
        yield c


def metadata(broker: BrokerHandle, path: str) -> dict[str, Any]:
    r = httpx.get(f"{broker.url}{path}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
def test_discovery_passes_authlibs_rfc8414_validation(broker: BrokerHandle, path: str) -> None:
    doc = metadata(broker, path)
    AuthorizationServerMetadata(doc).validate()
    assert doc["issuer"] == broker.url
    assert "id_token_signing_alg_values_supported" not in doc  # no ID tokens are issued


def exchange(client: OAuth2Client, broker: BrokerHandle) -> dict[str, Any]:
    token = client.fetch_token(f"{broker.url}/token", grant_type=GRANT_TYPE_TOKEN_EXCHANGE,
                               subject_token=broker.mint("payments", "api", pod=POD),
                               subject_token_type=TOKEN_TYPE_JWT, audience="orders-db", scope="read")
    return dict(token)


def test_authlib_exchanges_a_token(client: OAuth2Client, broker: BrokerHandle) -> None:
    token = exchange(client, broker)
    assert token["token_type"] == "Bearer" and token["scope"] == "read"
    assert token["issued_token_type"] == TOKEN_TYPE_JWT


def test_joserfc_verifies_an_issued_token_from_jwks_uri_alone(client: OAuth2Client, broker: BrokerHandle) -> None:
    access = exchange(client, broker)["access_token"]
    keys = KeySet.import_key_set(httpx.get(metadata(broker, "/.well-known/oauth-authorization-server")
                                           ["jwks_uri"]).json())
    verified = jose_jwt.decode(access, keys, algorithms=["ES256"])
    assert verified.header["typ"] == "at+jwt"
    jose_jwt.JWTClaimsRegistry(iss={"essential": True, "value": broker.url},
                               aud={"essential": True, "value": "orders-db"}).validate(verified.claims)


def test_pyjwt_jwks_client_verifies_an_issued_token(client: OAuth2Client, broker: BrokerHandle) -> None:
    access = exchange(client, broker)["access_token"]
    signing_key = jwt.PyJWKClient(f"{broker.url}/jwks").get_signing_key_from_jwt(access)
    claims = jwt.decode(access, signing_key.key, algorithms=["ES256"], audience="orders-db", issuer=broker.url)
    assert claims["sub"] == "system:serviceaccount:payments:api"


def introspect(client: OAuth2Client, broker: BrokerHandle, access: str) -> dict[str, Any]:
    r = client.introspect_token(f"{broker.url}/introspect", token=access, headers=broker.admin_headers())
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_authlib_introspects_and_revokes(client: OAuth2Client, broker: BrokerHandle) -> None:
    access = exchange(client, broker)["access_token"]
    assert introspect(client, broker, access)["active"] is True
    r = client.revoke_token(f"{broker.url}/revoke", token=access, token_type_hint="access_token")
    assert r.status_code == 200, r.text
    assert introspect(client, broker, access) == {"active": False}


def test_httpx_sse_receives_the_revocation_of_a_token(client: OAuth2Client, broker: BrokerHandle) -> None:
    access = exchange(client, broker)["access_token"]
    jti = jwt.decode(access, options={"verify_signature": False})["jti"]
    received: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with httpx.Client(timeout=httpx.Timeout(5, read=20)) as http, \
                connect_sse(http, "GET", f"{broker.url}/v1/revocations/events",
                            headers=broker.admin_headers()) as source:
            subscribed.set()
            for event in source.iter_sse():
                if event.data:
                    doc = json.loads(event.data)
                    if jti in json.dumps(doc):
                        received.append(doc)
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert subscribed.wait(10)
    r = httpx.post(f"{broker.url}/v1/admin/revocations", json={"jti": jti, "reason": "interop"},
                   headers=broker.admin_headers())
    assert r.status_code == 201, r.text
    thread.join(20)
    assert received, "no event named the revoked jti"
