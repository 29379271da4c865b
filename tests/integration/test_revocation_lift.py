"""Lifting a revocation re-opens issuance only (docs/contract.md §2): every token issued
before the revocation stays revoked until it expires, at introspection, after a broker
restart, and on every replica sharing a PostgreSQL store; tokens issued after the lift are
active."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jitmesh.devissuer import DevIssuer, PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import POLICIES, ReplicaLauncher, introspect, lift, revoked

AUD = "orders-db"
POD = PodRef("api-3", "3f2a7c10-1b2c-4d3e-8f40-5a6b7c8d9e0f")
SUBJECT = "system:serviceaccount:payments:api"


def token_from(broker: BrokerHandle) -> str:
    r = broker.exchange(broker.mint("payments", "api", pod=POD), AUD, scope="read", ttl=600)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def revoke_then_lift(broker: BrokerHandle, **target: str) -> None:
    doc = revoked(broker, reason="incident", **target)
    time.sleep(1.1)  # iat is in whole seconds: a token after the lift is issued a second later
    assert lift(broker, doc["id"]).status_code == 200


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES).url)


@pytest.mark.parametrize("target", [{"subject": SUBJECT}, {"pod_uid": POD.uid}, {"audience": AUD}])
def test_a_token_issued_before_a_revocation_stays_inactive_after_the_lift_and_a_restart(
        broker: BrokerHandle, target: dict[str, str]) -> None:
    before = token_from(broker)
    assert introspect(broker, before)["active"] is True
    revoke_then_lift(broker, **target)
    after = token_from(broker)  # issuance is open again
    assert introspect(broker, before) == {"active": False}
    assert introspect(broker, after)["active"] is True
    broker.restart()
    assert introspect(broker, before) == {"active": False}
    assert introspect(broker, after)["active"] is True


@pytest.fixture
def replicas(make_opa: Callable[..., Any], tmp_path: Path,
             postgres_url: str) -> Iterator[tuple[BrokerHandle, BrokerHandle]]:
    launcher = ReplicaLauncher(tmp_path, issuer_url="http://jitmesh-broker.jitmesh.svc:8080")
    opa = make_opa(POLICIES)
    dev = DevIssuer()
    yield launcher.replica(opa.url, postgres_url, dev), launcher.replica(opa.url, postgres_url, dev)
    launcher.stop_all()


@pytest.mark.postgres
def test_a_lift_on_one_replica_revives_no_token_on_the_other_nor_after_it_restarts(
        replicas: tuple[BrokerHandle, BrokerHandle]) -> None:
    a, b = replicas
    before = token_from(b)
    assert introspect(a, before)["active"] is True
    revoke_then_lift(a, subject=SUBJECT)
    after = token_from(b)
    assert introspect(b, before) == {"active": False}
    assert introspect(b, after)["active"] is True
    b.restart()
    assert introspect(b, before) == {"active": False}
    assert introspect(a, before) == {"active": False}
    assert introspect(b, after)["active"] is True
