"""A revocation made while an issuance waits on the policy still stops that issuance: the
broker checks again just before it signs. Real OPA and broker; the policy's `http.send`
calls a loopback server that holds the decision until the test has revoked."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import revoke

POD = PodRef("api-1", "11111111-2222-4333-8444-555555555555")


@dataclass
class Gate:
    """A loopback HTTP server whose GETs wait until `release` is set."""
    url: str
    asked: threading.Event
    release: threading.Event


@pytest.fixture
def gate() -> Iterator[Gate]:
    asked, release = threading.Event(), threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.set()
            release.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Gate(f"http://127.0.0.1:{server.server_address[1]}", asked, release)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def gated_broker(gate: Gate, tmp_path: Path, make_opa: Callable[..., Any],
                 broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    policy = tmp_path / "gated"
    policy.mkdir()
    (policy / "gated.rego").write_text(
        "package jitmesh.authz\n\n"
        'decision := {"allow": true, "scopes": ["read"], "ttl_seconds": 300} if {\n'
        f'\thttp.send({{"method": "GET", "url": "{gate.url}", "timeout": "20s"}}).status_code == 200\n'
        "}\n")
    return broker_factory(make_opa(policy).url, opa_timeout=20)


@pytest.mark.parametrize("kind", ["subject", "pod_uid", "audience"])
def test_a_revocation_made_while_the_policy_decides_refuses_the_token(gate: Gate, gated_broker: BrokerHandle,
                                                                      kind: str) -> None:
    sa = gated_broker.mint("payments", "api", pod=POD)
    value = {"subject": "system:serviceaccount:payments:api", "pod_uid": POD.uid, "audience": "orders-db"}[kind]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: gated_broker.exchange(sa, "orders-db", scope="read"))
        assert gate.asked.wait(20), "the policy never asked the gate"
        r = revoke(gated_broker, **{kind: value, "reason": "revoked mid-issuance"})
        assert r.status_code == 201, r.text
        gate.release.set()
        answer: httpx.Response = pending.result(timeout=30)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_grant" and "access_token" not in body
    assert "revoked mid-issuance" in body["error_description"]
    audit = httpx.get(f"{gated_broker.url}/v1/admin/audit", params={"event": "issued"},
                      headers=gated_broker.admin_headers()).json()["records"]
    assert audit == []
