"""`GET /v1/revocations/events` against a real broker (docs/contract.md §2): what an
admin and what a sidecar sees, resuming after Last-Event-ID, and refusals."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import POLICIES, EventReader, lift, revoked

POD = PodRef("api-1", "5d1e0000-aaaa-4bbb-8ccc-000000000001")


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES).url)


def admin_stream(broker: BrokerHandle, last_event_id: str | None = None) -> EventReader:
    return EventReader(broker.url, broker.admin_token, last_event_id)


def seq_of(event_id: str | None) -> int:
    """The seq part of an `<epoch>-<seq>` event id."""
    assert event_id is not None
    return int(event_id.rpartition("-")[2])


def test_the_stream_is_server_sent_events_that_start_with_ready(broker: BrokerHandle) -> None:
    with admin_stream(broker) as events:
        assert events.response.status_code == 200
        assert events.response.headers["content-type"].startswith("text/event-stream")
        assert events.response.headers["cache-control"] == "no-store"
        eid, data = events.next_of("ready")
        assert eid == f"{data['epoch']}-{data['seq']}" and set(data) == {"seq", "epoch"}


def test_an_admin_sees_each_revocation_with_what_when_why_and_who(broker: BrokerHandle) -> None:
    with admin_stream(broker) as events:
        events.next_of("ready")
        doc = revoked(broker, subject="system:serviceaccount:payments:api", reason="incident 7")
        eid, ev = events.next_of("revoked")
        assert seq_of(eid) == ev["seq"]
        assert ev["id"] == doc["id"] and ev["kind"] == "subject"
        assert ev["value"] == "system:serviceaccount:payments:api" and ev["reason"] == "incident 7"
        assert ev["time"] == pytest.approx(doc["created_at"]) and ev["created_by"].startswith("admin-token:")
        lift(broker, doc["id"])
        lid, lifted = events.next_of("lifted")
        assert seq_of(lid) > seq_of(eid) and lifted["id"] == doc["id"] and lifted["lifted_at"] is not None


def test_reconnecting_with_last_event_id_replays_every_event_missed(broker: BrokerHandle) -> None:
    with admin_stream(broker) as events:
        ready, _ = events.next_of("ready")
    missed = [revoked(broker, audience=f"missed-{i}")["id"] for i in range(3)]
    with admin_stream(broker, last_event_id=ready) as events:
        replayed = [events.next_of("revoked")[1]["id"] for _ in missed]
        assert replayed == missed
        eid, data = events.next_of("ready")
        assert data["seq"] == seq_of(eid) >= seq_of(ready) + 3


def test_last_event_id_may_be_a_query_parameter(broker: BrokerHandle) -> None:
    with admin_stream(broker) as events:
        ready, _ = events.next_of("ready")
    doc = revoked(broker, audience="via-query")
    with httpx.stream("GET", f"{broker.url}/v1/revocations/events", params={"last_event_id": ready},
                      headers=broker.admin_headers(), timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and doc["id"] in line:
                break


def test_a_sidecar_sees_its_own_subject_and_pod_every_jti_and_audience_but_not_other_subjects(
        broker: BrokerHandle) -> None:
    sa = broker.mint("payments", "api", pod=POD)
    with EventReader(broker.url, sa) as events:
        events.next_of("ready")
        revoked(broker, subject="system:serviceaccount:shop:web", reason="not yours")
        revoked(broker, pod_uid="99999999-0000-4000-8000-000000000000", reason="not yours either")
        jti = revoked(broker, jti="some-jti", reason="secret reason")
        aud = revoked(broker, audience="orders-db", reason="rotated")
        pod = revoked(broker, pod_uid=POD.uid, reason="evicted")
        mine = revoked(broker, subject="system:serviceaccount:payments:api", reason="compromised")
        seen = [events.next_of("revoked")[1] for _ in range(4)]
    assert [e["id"] for e in seen] == [jti["id"], aud["id"], pod["id"], mine["id"]]
    assert "reason" not in seen[0] and seen[1]["reason"] == "rotated" and seen[3]["reason"] == "compromised"
    assert all("created_by" not in e and "lifted_by" not in e for e in seen)
    for doc in (aud, pod, mine):
        lift(broker, doc["id"])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_the_stream_needs_a_serviceaccount_or_admin_token(broker: BrokerHandle, headers: dict[str, str]) -> None:
    r = httpx.get(f"{broker.url}/v1/revocations/events", headers=headers, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def test_an_expired_serviceaccount_token_is_refused(broker: BrokerHandle) -> None:
    sa = broker.mint("payments", "api", now=time.time() - 3600)
    r = httpx.get(f"{broker.url}/v1/revocations/events", headers={"Authorization": f"Bearer {sa}"}, timeout=10)
    assert r.status_code == 401 and "ServiceAccount" in r.json()["error_description"]


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 30])
def test_a_malformed_last_event_id_is_400(broker: BrokerHandle, value: str) -> None:
    r = httpx.get(f"{broker.url}/v1/revocations/events", timeout=10,
                  headers={**broker.admin_headers(), "Last-Event-ID": value})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["error_description"]


def test_metrics_count_open_streams_and_the_last_event_followed(broker: BrokerHandle) -> None:
    def metric(name: str) -> float:
        text = httpx.get(f"{broker.url}/metrics", timeout=10).text
        line = next(x for x in text.splitlines() if x.startswith(name + " "))
        return float(line.split()[1])

    with admin_stream(broker) as events:
        eid, _ = events.next_of("ready")
        assert metric("jitmesh_revocation_event_streams") >= 1
        doc = revoked(broker, audience="metered")
        events.next_of("revoked")
        assert metric("jitmesh_revocation_events_seq") >= seq_of(eid) + 1
    lift(broker, doc["id"])


def test_a_holder_revocation_event_carries_the_tokens_audience_and_expiry_for_verifiers(broker: BrokerHandle) -> None:
    r = broker.exchange(broker.mint("payments", "api", pod=POD), "orders-db", scope="read", ttl=120)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    with admin_stream(broker) as events:
        events.next_of("ready")
        assert httpx.post(f"{broker.url}/revoke", data={"token": token}, timeout=10).status_code == 200
        _, ev = events.next_of("revoked")
    assert (ev["kind"], ev["value"]) == ("jti", claims["jti"])
    assert ev["audience"] == "orders-db" and ev["expires_at"] == claims["exp"]
