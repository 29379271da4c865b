"""Real brokers on a real PostgreSQL: issuance audited in the shared database, replicas
agreeing on keys, and a database restart failing issuance closed, then healing by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jitmesh.devissuer import DevIssuer, PodRef
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.postgres

POLICIES = Path(__file__).parent / "policies"
POD = PodRef("api-1", "11111111-2222-4333-8444-555555555555")


def exchange(broker: BrokerHandle) -> httpx.Response:
    return broker.exchange(broker.mint("payments", "api", pod=POD), "orders-db", scope="read")


def audited_decision_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT decision_id FROM audit WHERE event = 'issued'")}


def test_a_token_issued_by_a_broker_on_postgres_is_audited_there(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], postgres_url: str) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, store=postgres_url)
    r = exchange(broker)
    assert r.status_code == 200, r.text
    assert r.json()["decision_id"] in audited_decision_ids(postgres_url)


def test_two_replicas_on_one_database_publish_the_same_jwks(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], postgres_url: str) -> None:
    opa = make_opa(POLICIES / "grant").url
    issuer = DevIssuer()
    a = broker_factory(opa, store=postgres_url, issuer=issuer)
    b = broker_factory(opa, store=postgres_url, issuer=issuer)
    jwks_a = httpx.get(f"{a.url}/jwks").json()
    jwks_b = httpx.get(f"{b.url}/jwks").json()
    assert jwks_a == jwks_b and len(jwks_a["keys"]) >= 1


def test_issuance_fails_closed_while_postgres_is_down_and_resumes_without_a_broker_restart(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_postgres_server: Callable[[], PostgresServer]) -> None:
    server = make_postgres_server()
    url = server.create_database()
    broker = broker_factory(make_opa(POLICIES / "grant").url, store=url)
    issued_before = [exchange(broker) for _ in range(5)]
    assert all(r.status_code == 200 for r in issued_before)

    server.stop()
    started = time.monotonic()
    during = exchange(broker)
    took = time.monotonic() - started
    assert during.status_code == 503, during.text
    assert during.json()["error"] == "temporarily_unavailable" and "access_token" not in during.json()
    assert took < 15

    server.start()
    deadline = time.monotonic() + 20
    while (after := exchange(broker)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after.status_code == 200, after.text
    issued = {r.json()["decision_id"] for r in [*issued_before, after]}
    assert issued <= audited_decision_ids(url)
