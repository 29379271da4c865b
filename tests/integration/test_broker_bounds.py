"""Bounded work for strangers, against a real broker: a flood of garbage subject tokens costs a
bounded number of audit records (with their count), the audit trail is purged after
`--audit-retention` (SQLite and PostgreSQL), a request whose body never arrives is answered
408 and closed within `--request-read-timeout`, and a reader may introspect and follow the
revocation events but change nothing."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdp.audit import COALESCE_AFTER
from pdp.store import open_store_from_url
from pdp.store.base import AuditRecord
from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"
DAY = 86400.0


def audit_records(broker: BrokerHandle, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(),
                      params={"limit": 1000, "after_seq": after, **params}, timeout=10)
        assert r.status_code == 200, r.text
        page = r.json()["records"]
        out += page
        if len(page) < 1000:
            return out
        after = page[-1]["seq"]


def garbage_exchange(client: httpx.Client, broker: BrokerHandle, i: int) -> httpx.Response:
    return client.post(f"{broker.url}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": f"garbage.{i}.x",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": f"aud-{i % 7}"})


# --- the audit trail: coalesced refusals, a record per issued token, retention -------------------

def test_a_flood_of_garbage_subject_tokens_from_one_address_costs_a_few_audit_records_that_count_it(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url)
    started = time.time()
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: garbage_exchange(client, broker, i).status_code, range(500)))
    assert answers == [400] * 500
    deadline = time.monotonic() + 30
    while True:  # the counts are written back every few seconds
        rows = [r for r in audit_records(broker, event="denied", since=started - 1)
                if r["subject"] is None and r["details"].get("client_ip") == "127.0.0.1"]
        if sum(r["details"].get("count", 1) for r in rows) >= 500 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    coalesced = [r for r in rows if r["details"].get("coalesced")]
    assert len(rows) <= 2 * (COALESCE_AFTER + 1), f"{len(rows)} audit records for one flood"
    assert 1 <= len(coalesced) <= 2 and sum(r["details"]["count"] for r in coalesced) >= 500 - 2 * COALESCE_AFTER
    assert sum(r["details"].get("count", 1) for r in rows) == 500
    assert all(r["details"]["error"] == "invalid_grant" for r in rows)


def test_every_issued_token_keeps_a_record_of_its_own(make_opa: Callable[..., Any],
                                                        broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url)
    subject_token = broker.mint("payments", "api")
    decision_ids = set()
    for _ in range(30):
        r = broker.exchange(subject_token, "orders-db", scope="read")
        assert r.status_code == 200, r.text
        decision_ids.add(r.json()["decision_id"])
    issued = {r["decision_id"] for r in audit_records(broker, event="issued")}
    assert decision_ids <= issued and len(decision_ids) == 30


def _old_and_new_records(store_url: str, now: float) -> tuple[str, str]:
    old, new = f"old-{uuid.uuid4()}", f"new-{uuid.uuid4()}"

    async def write() -> None:
        store = open_store_from_url(store_url)
        await store.open()
        try:
            for i in range(12):  # more than one purge batch would be 5,000: a few are enough here
                await store.append_audit(AuditRecord(decision_id=f"{old}-{i}", time=now - 10 * DAY,
                                                     event="denied", details={"n": i}))
            await store.append_audit(AuditRecord(decision_id=new, time=now - DAY / 2, event="denied"))
        finally:
            await store.close()

    asyncio.run(write())
    return old, new


def _assert_purged(broker: BrokerHandle, old: str, new: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        left = [r["decision_id"] for r in audit_records(broker) if r["decision_id"].startswith((old, new))]
        if left == [new] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == [new], "records older than --audit-retention are purged, younger ones kept"


def test_audit_records_older_than_the_retention_are_purged_on_sqlite(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'purge.db'}"
    old, new = _old_and_new_records(store, time.time())
    broker = broker_factory(make_opa(POLICIES / "grant").url, store=store, audit_retention="2d")
    _assert_purged(broker, old, new)


def test_audit_records_older_than_the_retention_are_purged_on_postgresql(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], postgres_url: str) -> None:
    old, new = _old_and_new_records(postgres_url, time.time())
    broker = broker_factory(make_opa(POLICIES / "grant").url, store=postgres_url, audit_retention="48h")
    _assert_purged(broker, old, new)


def test_an_audit_retention_that_is_not_a_duration_is_refused_at_start(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    with pytest.raises(RuntimeError, match="--audit-retention"):
        broker_factory(make_opa(POLICIES / "grant").url, audit_retention="forever")


# --- requests that never finish -----------------------------------------------------------------

def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_a_request_whose_body_never_arrives_is_answered_408_and_closed_while_others_are_served(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, request_read_timeout=2)
    slow = [socket.create_connection(("127.0.0.1", broker.port)) for _ in range(20)]
    for sock in slow:
        sock.settimeout(20)  # the test's own give-up: far beyond the broker's bound
        sock.sendall(b"POST /token HTTP/1.1\r\nHost: broker\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\ngrant_type=")
    try:
        r = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read")
        assert r.status_code == 200, r.text  # the slow ones hold nobody else up
        answers = [_read_until_closed(sock) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:200]


def test_a_request_whose_headers_never_finish_is_closed(make_opa: Callable[..., Any],
                                                         broker_factory: Callable[..., BrokerHandle]) -> None:
    broker = broker_factory(make_opa(POLICIES / "grant").url, request_read_timeout=2)
    with socket.create_connection(("127.0.0.1", broker.port)) as sock:
        sock.settimeout(20)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: ")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408")


# --- the reader role ----------------------------------------------------------------------------

@pytest.fixture
def reader_broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
                  tmp_path: Path) -> tuple[BrokerHandle, dict[str, str]]:
    readers = tmp_path / "readers"
    readers.write_text("# resource servers\nreader-secret-1\n")
    broker = broker_factory(make_opa(POLICIES / "grant").url, reader_token_file=readers)
    return broker, {"Authorization": "Bearer reader-secret-1"}


def test_a_reader_may_introspect_and_follow_the_revocation_events(
        reader_broker: tuple[BrokerHandle, dict[str, str]]) -> None:
    broker, reader = reader_broker
    token = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()["access_token"]
    r = httpx.post(f"{broker.url}/introspect", data={"token": token}, headers=reader, timeout=10)
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    with httpx.stream("GET", f"{broker.url}/v1/revocations/events", headers=reader, timeout=10) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")


def test_a_reader_may_not_revoke_lift_approve_or_read_the_audit(
        reader_broker: tuple[BrokerHandle, dict[str, str]]) -> None:
    broker, reader = reader_broker
    created = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                         json={"audience": "orders-db", "reason": "drill"}, timeout=10)
    assert created.status_code == 201, created.text
    pending = broker.exchange(broker.mint("payments", "api"), "needs-approval", scope="read")
    request_id = pending.json()["access_request_id"]
    calls = [
        ("POST", "/v1/admin/revocations", {"json": {"audience": "x", "reason": "r"}}),
        ("DELETE", f"/v1/admin/revocations/{created.json()['id']}", {}),
        ("POST", f"/v1/admin/access-requests/{request_id}/approve", {"json": {}}),
        ("GET", "/v1/admin/audit", {}),
        ("GET", "/v1/admin/revocations", {}),
    ]
    for method, path, kw in calls:
        r = httpx.request(method, broker.url + path, headers=reader, timeout=10, **kw)
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope", (method, path, r.text)
    still = httpx.get(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(), timeout=10).json()
    assert created.json()["id"] in str(still)
