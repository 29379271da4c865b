"""`jitmesh up` as a user runs it: OPA on the shipped policies, the broker, the local
issuer, the demo ServiceAccount token and the demo workload's real sidecar; the printed
command works; tokens appear on disk; SIGTERM stops all."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jitmesh.procs import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def up(tmp_path: Path, opa_bin: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    out = tmp_path / "up.out"
    broker_port, opa_port, sidecar_port = free_port(), free_port(), free_port()
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "jitmesh.cli", "up", "--policies", str(REPO / "policies"),
                                 "--broker-port", str(broker_port), "--opa-port", str(opa_port),
                                 "--sidecar-port", str(sidecar_port), "--demo-ttl", "5",
                                 "--opa-bin", opa_bin], cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in out.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        time.sleep(0.2)
    yield proc, out, broker_port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_up_prints_a_token_command_that_works(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    line = next(x.strip() for x in out.read_text().splitlines() if x.strip().startswith("jitmesh token "))
    argv = shlex.split(line)
    p = subprocess.run([sys.executable, "-m", "jitmesh.cli", *argv[1:]], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", p.stdout.strip())


def test_up_keeps_its_state_under_dot_jitmesh(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    home = out.parent / ".jitmesh"
    for name in ("issuer.key", "jwks.json", "admin-token", "demo-app.jwt", "broker.db"):
        assert (home / name).exists(), name
    assert (home / "admin-token").stat().st_mode & 0o077 == 0


def test_up_stops_everything_on_sigterm(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    proc, out, broker_port = up
    assert httpx.get(f"http://127.0.0.1:{broker_port}/healthz").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "[up] stopped" in out.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{broker_port}/healthz", timeout=2)


def test_up_demo_sidecar_writes_granted_tokens_and_shows_the_denial(
        up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    tokens = out.parent / ".jitmesh" / "tokens"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            (tokens / "orders-api").exists() and (tokens / "payments-api").exists() and "DENIED" in out.read_text()):
        time.sleep(0.2)
    text = out.read_text()
    for audience in ("orders-api", "payments-api"):
        token = (tokens / audience).read_text()
        assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token), audience
    # the shipped policy grants demo-app no access to orders-db: no file, and the terminal says why
    assert not (tokens / "orders-db").exists()
    assert re.search(r"orders-db: DENIED by policy: .*no grant for audience", text), text[-2000:]


def test_up_demo_sidecar_refreshes_on_its_short_ttl(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    token_file = out.parent / ".jitmesh" / "tokens" / "orders-api"
    deadline = time.monotonic() + 30
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    first = token_file.read_text()
    while time.monotonic() < deadline and (
            token_file.read_text() == first or "orders-api: token refreshed" not in out.read_text()):
        time.sleep(0.2)  # the terminal narrates the sidecar's log every 0.5 s, after the file changed
    assert token_file.read_text() != first
    assert "orders-api: token refreshed" in out.read_text()
