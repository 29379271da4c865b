"""`jitmesh up` as a user runs it: OPA on the shipped policies, the broker, the local
issuer, the demo ServiceAccount token and the demo workload's real sidecar (DPoP on, the orders
service forwarded), the orders service behind a real proxy; the printed commands work; tokens
appear on disk; the narration tells what the proxy allowed, denied and refused; SIGTERM stops all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from jitmesh.procs import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def up(tmp_path: Path, opa_bin: str,
       request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    out = tmp_path / "up.out"
    broker_port, opa_port, sidecar_port, proxy_port, upstream_port = (free_port(), free_port(), free_port(),
                                                                      free_port(), free_port())
    extra = list(getattr(request, "param", []))  # more `jitmesh up` flags, by indirect parametrization
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "jitmesh.cli", "up", "--policies", str(REPO / "policies"),
                                 "--broker-port", str(broker_port), "--opa-port", str(opa_port),
                                 "--sidecar-port", str(sidecar_port), "--proxy-port", str(proxy_port),
                                 "--upstream-port", str(upstream_port),
                                 "--demo-ttl", "5",
                                 "--opa-bin", opa_bin, *extra], cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in out.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        time.sleep(0.2)
    yield proc, out, broker_port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def pasted(out: Path, marker: str, drop: str = "") -> subprocess.CompletedProcess[str]:
    """Run the printed command containing `marker` (less `drop`) as a user pasting it would: in a
    shell with the printed `export` lines, from the directory `jitmesh up` ran in, no JITMESH_* of ours."""
    lines = [x.strip() for x in out.read_text().splitlines()]
    exports = [x for x in lines if x.startswith("export JITMESH_")]
    command = next(x for x in lines if marker in x).replace(drop, "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    env["PATH"] = "/usr/bin:/bin"  # the venv is not on PATH: the printed command must not need it
    return subprocess.run(["bash", "-c", "; ".join([*exports, command])], capture_output=True, text=True,
                          timeout=60, cwd=out.parent, env=env)


def test_up_prints_a_token_command_that_works_as_pasted(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    p = pasted(out, " token --audience ")
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", p.stdout.strip())


def test_up_prints_an_audit_command_that_needs_no_more_flags(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    assert "export JITMESH_ADMIN_TOKEN_FILE=" in out.read_text()
    p = pasted(out, " audit --follow", drop=" --follow")  # the same command, without following
    assert p.returncode == 0, p.stderr
    assert "denied" in p.stdout, p.stdout[-2000:]


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
    # the shipped policy grants demo-app no access to orders-db: asked once, and the terminal says why
    assert not (tokens / "orders-db").exists()
    assert re.search(r"orders-db: asked once, on purpose, .* 403 access_denied: .*no grant for audience", text), \
        text[-2000:]
    assert text.count("orders-db:") == 1


def test_up_demo_sidecar_turns_ready(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    url = re.search(r"demo workload's sidecar at (http://127\.0\.0\.1:\d+)", out.read_text())
    assert url, out.read_text()[-2000:]
    deadline = time.monotonic() + 30
    while httpx.get(f"{url.group(1)}/readyz", timeout=5).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert httpx.get(f"{url.group(1)}/readyz", timeout=5).status_code == 200


def test_up_starts_again_at_once_after_it_stopped(up: tuple[subprocess.Popen[bytes], Path, int],
                                                  opa_bin: str) -> None:
    proc, out, broker_port = up
    with httpx.Client() as client:  # kept open, so the broker closes it as it stops: TIME-WAIT on its port
        client.get(f"http://127.0.0.1:{broker_port}/healthz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    argv = [str(a) for a in proc.args]  # type: ignore[union-attr]
    again = subprocess.Popen(argv, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        seen = b""
        assert again.stdout is not None
        while b"Ctrl-C stops everything" not in seen and time.monotonic() < deadline:
            if again.poll() is not None:
                seen += again.stdout.read()
                break
            seen += again.stdout.read1(4096)  # type: ignore[attr-defined]
        assert b"Ctrl-C stops everything" in seen, seen.decode(errors="replace")[-2000:]
        assert b"is in use" not in seen
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)


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


@pytest.mark.parametrize("up", [["--shadow"]], indirect=True)
def test_up_shadow_compares_the_example_candidate(up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    assert "shadow mode on" in out.read_text()
    deadline = time.monotonic() + 30
    while True:  # the demo sidecar's issuances are the comparisons
        p = pasted(out, " shadow report --since 10m")
        if "NO DATA" not in p.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert p.returncode == 0, p.stderr
    assert "NO DATA" not in p.stdout and "allow_to_deny" in p.stdout, p.stdout


def _wait_for_text(out: Path, pattern: str, timeout: float, after: int = 0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, out.read_text()[after:])
        if found or time.monotonic() > deadline:
            assert found, f"no {pattern!r} in:\n{out.read_text()[-3000:]}"
            return found
        time.sleep(0.2)


def test_up_demo_calls_the_second_workload_through_its_proxy_and_tells_allow_deny_and_revocation(
        up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    refused = _wait_for_text(out, r"orders: REFUSED GET /orders/42 with the revoked token ([0-9.]+)s after the "
                                  r"revocation: 401 [^\n]*revoked", timeout=90)
    assert float(refused.group(1)) < 1.0, refused.group(0)
    text = out.read_text()
    assert re.search(r"orders: ALLOWED GET /orders/42 from demo/demo-app through the proxy: 200 .*"
                     r"system:serviceaccount:demo:demo-app", text), text[-3000:]
    assert re.search(r"orders: DENIED GET /admin/export from demo/demo-app through the proxy: 403 .+ \(decision ",
                     text), text[-3000:]
    assert re.search(r"orders: REVOKED the token of demo/demo-app .* \(jti [\w-]+\)", text), text[-3000:]
    # the sidecar replaces the revoked token, and the next rounds are admitted again
    _wait_for_text(out, r"orders: ALLOWED GET /orders/42", timeout=30, after=text.index(refused.group(0)))


def test_up_demo_app_reaches_orders_with_no_credential_and_its_sidecar_presents_the_bound_token_as_dpop(
        up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    _wait_for_text(out, r"orders: ALLOWED GET /orders/42 from demo/demo-app", timeout=60)
    # the printed curl sends no credential: only the sidecar's forwarder can have added one
    p = pasted(out, "curl http://127.0.0.1:")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["caller"] == "system:serviceaccount:demo:demo-app", p.stdout
    # the token the sidecar holds is bound to its key, and the proxy takes it only as DPoP with a
    # proof of that key: the request above reached the proxy as DPoP
    token = (out.parent / ".jitmesh" / "tokens" / "orders-api").read_text().strip()
    assert jwt.decode(token, options={"verify_signature": False})["cnf"]["jkt"]
    proxy_url = re.search(r"behind a jitmesh proxy at (http://127\.0\.0\.1:\d+)", out.read_text())
    assert proxy_url, out.read_text()[-3000:]
    as_bearer = httpx.get(proxy_url.group(1) + "/orders/42", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert as_bearer.status_code == 401 and "DPoP-bound" in as_bearer.headers["www-authenticate"]


def test_up_demo_tells_a_stolen_token_refused_without_the_sidecars_key(
        up: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _, out, _ = up
    _wait_for_text(out, r"orders: STOLEN: a thief who can read [^\n]*/tokens/orders-api replays the token of "
                        r"demo/demo-app", timeout=60)
    _wait_for_text(out, r"orders: REFUSED GET /orders/42 with the stolen token as Bearer: 401 DPoP realm=\"jitmesh\", "
                        r"error=\"invalid_token\", error_description=\"the token is DPoP-bound", timeout=10)
    _wait_for_text(out, r"orders: REFUSED GET /orders/42 with the stolen token as DPoP with a proof of the thief's "
                        r"own key: 401 DPoP realm=\"jitmesh\", error=\"invalid_dpop_proof\", [^\n]*jkt: the "
                        r"proof's key is not the one the token is bound to", timeout=10)
    # told once; the app's own calls go on being admitted
    _wait_for_text(out, r"orders: REVOKED the token", timeout=30)
    assert out.read_text().count("orders: STOLEN:") == 1
    assert "it should have refused it" not in out.read_text()
