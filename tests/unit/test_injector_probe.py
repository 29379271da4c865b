"""The sidecar's startupProbe command, run as the kubelet runs it, against a fake local API:
what it prints on failure is what `kubectl describe pod` shows as the event."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from injector.config import InjectorConfig
from injector.container_sidecar import _readyz_once
from jitmesh.procs import free_port


class FakeLocalAPI(BaseHTTPRequestHandler):
    status = 200
    body: dict[str, object] = {"status": "ready"}

    def do_GET(self) -> None:
        data = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_api() -> Iterator[tuple[int, type[FakeLocalAPI]]]:
    handler = type("Handler", (FakeLocalAPI,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], handler
    server.shutdown()


def _probe(port: int) -> subprocess.CompletedProcess[str]:
    config = InjectorConfig(broker_url="http://broker:8080", sidecar_image="jitmesh:test", agent_port=port)
    return subprocess.run(_readyz_once(config), capture_output=True, text=True, timeout=30)


def test_probe_passes_when_the_sidecar_is_ready(local_api: tuple[int, type[FakeLocalAPI]]) -> None:
    port, _ = local_api
    assert _probe(port).returncode == 0


def test_probe_failure_prints_the_denial_reasons(local_api: tuple[int, type[FakeLocalAPI]]) -> None:
    port, handler = local_api
    handler.status = 503
    handler.body = {"status": "not ready", "missing": ["orders-db"],
                    "message": "no token for orders-db: access_denied: namespace \"orders\" says no"}
    out = _probe(port)
    assert out.returncode == 1
    assert out.stdout + out.stderr == 'jitmesh-sidecar: no token for orders-db: access_denied: namespace "orders" ' \
                                      "says no\n"


def test_probe_failure_before_the_local_api_listens_is_one_line() -> None:
    out = _probe(free_port())
    assert out.returncode == 1
    assert out.stderr.startswith("jitmesh-sidecar: local API not answering yet") and out.stderr.count("\n") == 1
