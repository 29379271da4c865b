"""Signing keys of a real broker: rotation, retired keys still published, and keys that
survive a restart because they live in the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"


def issue(broker: BrokerHandle) -> str:
    r = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read")
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def published(broker: BrokerHandle) -> dict[str, Any]:
    return {k["kid"]: k for k in httpx.get(f"{broker.url}/jwks").json()["keys"]}


def verifies(broker: BrokerHandle, token: str) -> bool:
    keys = jwt.PyJWKSet.from_dict(httpx.get(f"{broker.url}/jwks").json())
    try:
        key = keys[kid_of(token)]
        jwt.decode(token, key.key, algorithms=["ES256"], audience="orders-db")
    except (KeyError, jwt.PyJWTError):
        return False
    return True


def wait_for_new_kid(broker: BrokerHandle, old: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        token = issue(broker)
        if kid_of(token) != old:
            return token
        time.sleep(0.3)
    raise AssertionError(f"the signing key did not rotate away from {old} within {timeout}s")


def test_published_key_is_es256_p256_with_an_rfc7638_thumbprint_kid(make_opa: Callable[..., Any],
                                                                     broker_factory: Callable[..., BrokerHandle]
                                                                     ) -> None:
    from pdp.tokens import thumbprint

    broker = broker_factory(make_opa(POLICIES / "grant").url)
    (key,) = published(broker).values()
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
    assert "d" not in key
    assert key["kid"] == thumbprint(key)
    assert kid_of(issue(broker)) == key["kid"]


def test_rotation_signs_with_a_new_key_and_keeps_the_retired_one_published(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, key_rotation=2, max_ttl=60)
    old_token = issue(broker)
    new_token = wait_for_new_kid(broker, kid_of(old_token))
    keys = published(broker)
    assert {kid_of(old_token), kid_of(new_token)} <= set(keys)
    assert verifies(broker, old_token) and verifies(broker, new_token)


def test_restart_keeps_the_signing_key_and_the_published_keys(make_opa: Callable[..., Any],
                                                              broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url)
    before = issue(broker)
    jwks_before = published(broker)
    broker.restart()
    after = issue(broker)
    assert kid_of(after) == kid_of(before)
    assert published(broker) == jwks_before
    assert verifies(broker, before)


def test_retired_keys_survive_a_restart(make_opa: Callable[..., Any],
                                        broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, key_rotation=2, max_ttl=60)
    old_token = issue(broker)
    wait_for_new_kid(broker, kid_of(old_token))
    broker.restart()
    assert kid_of(old_token) in published(broker)
    assert verifies(broker, old_token)
