"""The revocation event streams are bounded (docs/contract.md §2): overall and per subject
(503 with Retry-After beyond), and a reconnect replays only what the subscriber may see."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import POLICIES, EventReader, revoked, wait_for

POD_A = PodRef("a-1", "0a0a0a0a-0000-4000-8000-00000000000a")


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES).url, max_event_streams=3, max_event_streams_per_subject=2)


@contextlib.contextmanager
def opened(broker: BrokerHandle, token: str) -> Iterator[EventReader]:
    reader = EventReader(broker.url, token)
    try:
        assert reader.response.status_code == 200
        reader.next_of("ready")
        yield reader
    finally:
        reader.close()


def refused(broker: BrokerHandle, token: str) -> httpx.Response:
    with httpx.stream("GET", f"{broker.url}/v1/revocations/events", headers={"Authorization": f"Bearer {token}"},
                      timeout=10) as r:
        r.read()
        return r


def assert_busy(r: httpx.Response, says: str) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"] == "temporarily_unavailable" and says in r.json()["error_description"]


def test_streams_beyond_the_per_subject_and_overall_bounds_are_refused_with_retry_after(
        broker: BrokerHandle) -> None:
    a = broker.mint("payments", "api", pod=POD_A)
    b = broker.mint("shop", "web")
    with opened(broker, a):
        second = EventReader(broker.url, a)
        second.next_of("ready")
        assert_busy(refused(broker, a), "system:serviceaccount:payments:api")
        with opened(broker, b):
            assert_busy(refused(broker, broker.mint("shop", "cart")), "at most 3")
            assert_busy(refused(broker, broker.admin_token), "at most 3")
        second.close()
        wait_for(lambda: fits(broker, a), timeout=5, what="the closed stream's slot given back")


def fits(broker: BrokerHandle, token: str) -> bool:
    reader = EventReader(broker.url, token)
    try:
        return reader.response.status_code == 200
    finally:
        reader.close()


def test_a_sidecar_reconnecting_from_zero_gets_only_its_own_state_not_the_log(broker: BrokerHandle) -> None:
    other = revoked(broker, subject="system:serviceaccount:shop:web", reason="not yours")
    mine = revoked(broker, subject="system:serviceaccount:payments:api", reason="yours")
    revoked(broker, pod_uid="99999999-0000-4000-8000-000000000000", reason="another pod")
    with EventReader(broker.url, broker.mint("payments", "api", pod=POD_A), last_event_id="0") as events:
        event, _, state = events.next_event()
        assert event == "resync"
        assert [r["id"] for r in state["revocations"]] == [mine["id"]]
        assert other["id"] not in str(state)
        events.next_of("ready")


def test_a_replay_after_an_id_of_this_store_carries_only_what_the_sidecar_may_see(broker: BrokerHandle) -> None:
    with EventReader(broker.url, broker.admin_token) as events:
        start, _ = events.next_of("ready")
    revoked(broker, subject="system:serviceaccount:shop:web", reason="not yours")
    aud = revoked(broker, audience="orders-db", reason="rotated")
    mine = revoked(broker, subject="system:serviceaccount:payments:api", reason="yours")
    revoked(broker, pod_uid="99999999-0000-4000-8000-000000000000", reason="another pod")
    with EventReader(broker.url, broker.mint("payments", "api", pod=POD_A), last_event_id=start) as events:
        seen = []
        while True:
            event, _, data = events.next_event()
            if event == "ready":
                break
            seen.append((event, data["id"]))
    assert seen == [("revoked", aud["id"]), ("revoked", mine["id"])]
