"""Revocation basics against a real broker: RFC 7009 holder revocation, RFC 7662
introspection for admins, and revocations in the store refusing new issuance."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef
from pdp.store.base import Revocation, RevocationKind
from pdp.store.sqlite import SQLiteStore
from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"
POD = PodRef("api-1", "11111111-2222-4333-8444-555555555555")


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES / "grant").url)


def issue(broker: BrokerHandle, ttl: int | None = None) -> str:
    r = broker.exchange(broker.mint("payments", "api", pod=POD), "orders-db", scope="read", ttl=ttl)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def introspect(broker: BrokerHandle, token: str) -> dict[str, Any]:
    r = httpx.post(f"{broker.url}/introspect", data={"token": token}, headers=broker.admin_headers())
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def revoke_in_store(broker: BrokerHandle, kind: RevocationKind, value: str) -> str:
    rid = str(uuid.uuid4())

    async def add() -> None:
        store = SQLiteStore(broker.store_url)
        await store.open()
        try:
            await store.add_revocation(Revocation(id=rid, kind=kind, value=value, reason="test", created_at=time.time(),
                                                  created_by="test"))
        finally:
            await store.close()

    asyncio.run(add())
    return rid


def wait_refused(broker: BrokerHandle, audience: str = "orders-db", timeout: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = broker.exchange(broker.mint("payments", "api", pod=POD), audience, scope="read")
        if r.status_code != 200:
            return r
        time.sleep(0.2)
    raise AssertionError("issuance was never refused")


def test_introspection_of_a_live_token_is_active_with_its_claims(broker: BrokerHandle) -> None:
    doc = introspect(broker, issue(broker))
    assert doc["active"] is True
    assert doc["sub"] == "system:serviceaccount:payments:api" and doc["scope"] == "read" and doc["aud"] == "orders-db"


def test_introspection_needs_an_admin_token(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/introspect", data={"token": issue(broker)},
                   headers={"Authorization": "Bearer not-an-admin"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert "active" not in r.json()


def test_introspection_of_a_foreign_token_is_inactive(broker: BrokerHandle) -> None:
    assert introspect(broker, broker.mint("payments", "api")) == {"active": False}


def test_introspection_of_an_expired_token_is_inactive(broker: BrokerHandle) -> None:
    token = issue(broker, ttl=1)
    time.sleep(2.1)
    assert introspect(broker, token) == {"active": False}


def test_holder_revocation_makes_the_token_inactive(broker: BrokerHandle) -> None:
    token = issue(broker)
    r = httpx.post(f"{broker.url}/revoke", data={"token": token, "token_type_hint": "access_token"})
    assert r.status_code == 200
    assert introspect(broker, token) == {"active": False}


def test_revoking_an_unknown_token_is_200(broker: BrokerHandle) -> None:
    assert httpx.post(f"{broker.url}/revoke", data={"token": "nonsense"}).status_code == 200


def test_revoked_subject_gets_invalid_grant(broker: BrokerHandle) -> None:
    revoke_in_store(broker, "subject", "system:serviceaccount:payments:api")
    r = wait_refused(broker)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "revoked subject" in r.json()["error_description"]


def test_revoked_pod_gets_invalid_grant(broker: BrokerHandle) -> None:
    revoke_in_store(broker, "pod_uid", POD.uid)
    r = wait_refused(broker)
    assert r.json()["error"] == "invalid_grant" and "revoked pod" in r.json()["error_description"]


def test_revoked_audience_gets_invalid_grant(broker: BrokerHandle) -> None:
    revoke_in_store(broker, "audience", "orders-db")
    r = wait_refused(broker)
    assert r.json()["error"] == "invalid_grant" and "revoked audience" in r.json()["error_description"]


def test_subject_revocation_makes_its_live_tokens_inactive(broker: BrokerHandle) -> None:
    token = issue(broker)
    revoke_in_store(broker, "subject", "system:serviceaccount:payments:api")
    wait_refused(broker)
    assert introspect(broker, token) == {"active": False}
