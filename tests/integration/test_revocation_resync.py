"""A subscriber whose Last-Event-ID this broker cannot have issued is resynchronised, not
left silent (docs/contract.md §2, §5): a sidecar whose broker came back with a store made
anew drops a token revoked there; a bogus id gets the state in force, then live events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jitmesh.devissuer import PodRef
from pdp.process import BrokerProcess
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import POLICIES, EventReader, file_jti, revoked, wait_for

AUD = "orders-db"
POD = PodRef("api-5", "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
SUBJECT = "system:serviceaccount:payments:api"


@pytest.fixture
def opa_url(make_opa: Callable[..., Any]) -> str:
    return str(make_opa(POLICIES).url)


@pytest.fixture
def broker(opa_url: str, broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return broker_factory(opa_url)


@pytest.fixture
def replacements() -> Iterator[list[BrokerProcess]]:
    started: list[BrokerProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout=5)


def subscriptions(sc: SidecarProcess) -> int:
    return sum(1 for e in sc.events() if e.get("event") == "events.subscribed")


def test_a_sidecar_whose_broker_store_was_made_anew_drops_a_token_revoked_on_the_new_store(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path,
        replacements: list[BrokerProcess]) -> None:
    for i in range(3):  # the old store's log is ahead of the new one's
        revoked(broker, audience=f"elsewhere-{i}")
    sa_file = tmp_path / "sa.jwt"
    sa_file.write_text(broker.mint("payments", "api", pod=POD, ttl=3600))
    sc = make_sidecar(broker_url=broker.url, audiences={AUD: ["read"]}, sa_token_file=sa_file, ttl=300)
    wait_for(sc.ready, timeout=20, what="sidecar ready")
    wait_for(lambda: subscriptions(sc) >= 1, timeout=10, what="subscribed")
    held = file_jti(sc.token_file(AUD))
    assert held
    broker.stop()
    # the same address, a new SQLite file: an empty store, a log starting again at 1
    fresh = BrokerProcess(flags={"opa_url": broker.opa_url, "jwks_file": broker.jwks_file,
                                 "subject_issuer": broker.issuer.issuer, "admin_token_file": broker.admin_token_file,
                                 "store": f"sqlite:///{tmp_path / 'new-store.db'}"},
                          log_path=tmp_path / "new-broker.log", port=broker.port)
    replacements.append(fresh)
    fresh.start(timeout=30)
    r = revoked(broker, jti=str(held), reason="revoked on the new store")
    assert r["kind"] == "jti"
    wait_for(lambda: file_jti(sc.token_file(AUD)) != held, timeout=15, what="the revoked token's file gone")
    wait_for(lambda: any(e.get("event") == "token.revoked" and e.get("jti") == held for e in sc.events()),
             timeout=5, what="the revocation logged by the sidecar")
    assert any(e.get("event") == "events.resync" for e in sc.events())
    wait_for(lambda: file_jti(sc.token_file(AUD)) not in (None, held), timeout=20, what="a new token")


@pytest.mark.parametrize("bogus", ["99999999", "0123abcd-5", "{epoch}-99999999"])
def test_a_last_event_id_this_broker_cannot_have_issued_gets_a_resync_then_live_events(
        broker: BrokerHandle, bogus: str) -> None:
    mine = revoked(broker, subject=SUBJECT, reason="before")
    revoked(broker, subject="system:serviceaccount:shop:web", reason="someone else")
    with EventReader(broker.url, broker.admin_token) as events:
        ready, data = events.next_of("ready")
    sa = broker.mint("payments", "api", pod=POD)
    last = bogus.format(epoch=data.get("epoch", "x"))
    with EventReader(broker.url, sa, last_event_id=last, read_timeout=5) as events:
        event, eid, state = events.next_event()
        assert event == "resync" and eid == ready
        assert [r["id"] for r in state["revocations"]] == [mine["id"]]  # its own, not another subject's
        events.next_of("ready")
        live = revoked(broker, audience=AUD, reason="after")
        _, ev = events.next_of("revoked")
        assert ev["id"] == live["id"]
