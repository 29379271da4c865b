"""PostgreSQL restarted under a real broker's load (faults): while the database is
down issuance fails closed (503 temporarily_unavailable with Retry-After, no token without
its audit record), it resumes by itself, and no audit record or revocation written before
the restart is lost; the revocation event stream carries on across the restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.revocation_support import POLICIES, EventReader, audit, revoked, wait_for

pytestmark = pytest.mark.postgres

OUTAGE = 8.0  # longer than the store waits for a connection (5 s), so refusals come while down
RECOVERY_LIMIT = 20.0
WORKERS = 3


@dataclass
class Load:
    """Threads asking for tokens until stopped; every answer kept with the time it came."""

    broker: BrokerHandle
    answers: list[tuple[float, int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _work(self, n: int) -> None:
        sa = self.broker.mint("payments", "api", pod=PodRef(f"api-{n}", f"00000000-0000-4000-8000-00000000000{n}"),
                              ttl=3600)
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                r = client.post(f"{self.broker.url}/token", data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": sa,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": "orders-db",
                    "scope": "read"})
                with self.lock:
                    self.answers.append((time.monotonic(), r.status_code, r.json(), dict(r.headers)))
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(WORKERS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def since(self, moment: float) -> list[tuple[float, int, dict[str, Any], dict[str, str]]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= moment]


def test_postgres_restart_under_load_fails_closed_resumes_by_itself_and_loses_nothing(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_postgres_server: Callable[[], PostgresServer]) -> None:
    pg = make_postgres_server()
    broker = broker_factory(make_opa(POLICIES).url, store=pg.create_database())
    before = revoked(broker, subject="system:serviceaccount:quarantine:bad", reason="before the restart")
    with EventReader(broker.url, broker.admin_token, read_timeout=60) as events:
        events.next_of("ready")
        with Load(broker) as load:
            wait_for(lambda: sum(1 for a in load.since(0) if a[1] == 200) >= 10, timeout=20, what="load running")
            pg.stop("fast")
            down_at = time.monotonic()
            time.sleep(OUTAGE)
            up_at = time.monotonic()
            pg.start()
            recovered = wait_for(lambda: any(a[1] == 200 for a in load.since(up_at)), timeout=RECOVERY_LIMIT,
                                 what="issuance resumed after the restart", step=0.1)
            time.sleep(0.5)
        after = revoked(broker, audience="after-the-restart", reason="after the restart")
        _, ev = events.next_of("revoked")
    assert ev["id"] == after["id"]  # the stream opened before the restart still delivers

    statuses = {a[1] for a in load.answers}
    assert statuses <= {200, 503}, statuses
    outage = [a for a in load.since(down_at + 0.3) if a[0] < up_at]  # 0.3 s: answers already on the way
    assert outage and all(a[1] == 503 for a in outage), "answers while PostgreSQL was down"
    for _, status, body, headers in load.answers:
        if status == 503:
            assert body["error"] == "temporarily_unavailable" and "access_token" not in body
            assert headers.get("retry-after")
    assert recovered < RECOVERY_LIMIT

    issued = {body["decision_id"] for _, status, body, _ in load.answers if status == 200}
    trail: set[str] = set()
    page = audit(broker, event="issued", limit=1000)
    while page:
        trail |= {r["decision_id"] for r in page}
        page = audit(broker, event="issued", limit=1000, after_seq=page[-1]["seq"]) if len(page) == 1000 else []
    assert issued <= trail, f"{len(issued - trail)} tokens were answered without an audit record"

    listed = httpx.get(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers()).json()["revocations"]
    assert before["id"] in {r["id"] for r in listed}
    refused = broker.exchange(broker.mint("quarantine", "bad"), "orders-db")
    assert refused.status_code == 400 and before["id"] in refused.json()["error_description"]
    assert any(r["details"].get("revocation_id") == before["id"] for r in audit(broker, event="revoked"))
