"""Credential injection through a real sidecar: an application with no credential calls its
loopback upstream port and the upstream (a small real HTTP(S) server) sees the broker's token;
plus the sidecar's DPoP key staying out of its files and logs, and /v1/dpop's refusals."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh import dpop
from jitmesh.contract import (
    ENV_DPOP,
    ENV_UPSTREAM_CA_PREFIX,
    ENV_UPSTREAM_LISTEN_PREFIX,
    ENV_UPSTREAM_URL_PREFIX,
    audience_env_suffix,
)
from jitmesh.devissuer import PodRef
from jitmesh.procs import free_port
from proxy.process import ProxyProcess
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream
from tests.integration.upstream_support import EchoUpstream

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"

POLICIES = Path(__file__).parent / "sidecar_policies"
AUDIENCE = "payments-api"
SUFFIX = "PAYMENTS_API"


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., Any]) -> Any:
    return broker_factory(make_opa(POLICIES).url)


@pytest.fixture
def sa_token_file(broker: Any, tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text(broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"), ttl=3600))
    return path


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[EchoUpstream]:
    with EchoUpstream(tls_dir=tmp_path / "upstream-tls") as up:
        yield up


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def upstream_env(url: str, port: int, ca_file: Path | None = None, dpop: bool = False,
                 audience: str = AUDIENCE) -> dict[str, str]:
    suffix = audience_env_suffix(audience)
    env = {ENV_UPSTREAM_URL_PREFIX + suffix: url, ENV_UPSTREAM_LISTEN_PREFIX + suffix: f"127.0.0.1:{port}"}
    if ca_file is not None:
        env[ENV_UPSTREAM_CA_PREFIX + suffix] = str(ca_file)
    if dpop:
        env[ENV_DPOP] = "true"
    return env


def start_forwarding(make_sidecar: Callable[..., SidecarProcess], broker_url: str, sa_token_file: Path,
                     url: str, ca_file: Path | None = None, ready: bool = True,
                     dpop: bool = False, audience: str = AUDIENCE) -> tuple[SidecarProcess, str]:
    port = free_port()
    sc = make_sidecar(broker_url=broker_url, audiences={audience: ["read"]}, sa_token_file=sa_token_file,
                      extra=upstream_env(url, port, ca_file, dpop, audience))
    if ready:
        wait_for(sc.ready, what="/readyz")
    return sc, f"http://127.0.0.1:{port}"


def verified_claims(broker: Any, token: str) -> dict[str, Any]:
    jwks = jwt.PyJWKSet.from_dict(httpx.get(f"{broker.url}/jwks", timeout=5).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return dict(jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE))


def test_an_app_without_credentials_reaches_the_upstream_with_the_audiences_token(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url + "/api/")
    seen = httpx.get(f"{local}/orders/7?expand=lines&x=%2F", timeout=10).json()
    scheme, _, token = seen["authorization"].partition(" ")
    assert scheme == "Bearer" and token == sc.token_file(AUDIENCE).read_text()
    assert verified_claims(broker, token)["sub"] == "system:serviceaccount:payments:api"
    assert (seen["path"], seen["query"]) == ("/api/orders/7", "expand=lines&x=%2F")
    assert seen["host"] == f"127.0.0.1:{upstream.port}"


def test_the_apps_own_authorization_and_dpop_headers_are_dropped(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url)
    seen = httpx.post(f"{local}/pay", content=b"{}", timeout=10,
                      headers={"Authorization": "Bearer stolen", "DPoP": "forged", "X-App": "kept"}).json()
    assert seen["authorization"] == f"Bearer {sc.token_file(AUDIENCE).read_text()}"
    assert seen["dpop"] is None and seen["x_app"] == "kept"


def test_a_tls_upstream_is_verified_with_the_ca_file_given(
        broker: Any, sa_token_file: Path, tls_upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc, local = start_forwarding(make_sidecar, broker.url, sa_token_file, tls_upstream.url, tls_upstream.ca_file)
    resp = httpx.get(f"{local}/ledger", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["authorization"] == f"Bearer {sc.token_file(AUDIENCE).read_text()}"


def test_a_tls_upstream_signed_by_another_ca_is_a_502_naming_tls(
        broker: Any, sa_token_file: Path, tls_upstream: EchoUpstream, tmp_path: Path,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    with EchoUpstream(tls_dir=tmp_path / "other-ca") as other:  # only for its CA
        assert other.ca_file is not None
        _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, tls_upstream.url, other.ca_file)
    resp = httpx.get(f"{local}/ledger", timeout=10)
    assert resp.status_code == 502
    assert resp.json()["error"] == "bad_gateway" and "TLS" in resp.json()["error_description"]


def test_a_tls_upstream_not_in_the_system_store_is_refused_without_a_ca_file(
        broker: Any, sa_token_file: Path, tls_upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, tls_upstream.url)
    resp = httpx.get(f"{local}/ledger", timeout=10)
    assert resp.status_code == 502 and "TLS" in resp.json()["error_description"]


def test_without_a_valid_token_the_upstream_port_answers_503(
        tmp_path: Path, upstream: EchoUpstream, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sa = tmp_path / "sa"
    sa.write_text("not-checked-by-an-unreachable-broker")
    _, local = start_forwarding(make_sidecar, f"http://127.0.0.1:{free_port()}", sa, upstream.url, ready=False)
    resp = httpx.get(f"{local}/orders", timeout=10)
    assert resp.status_code == 503
    assert resp.json()["error"] == "token_unavailable" and AUDIENCE in resp.json()["error_description"]


def test_an_upstream_that_is_down_is_a_502_at_once(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, down)
    started = time.monotonic()
    resp = httpx.get(f"{local}/orders", timeout=10)
    assert resp.status_code == 502 and "cannot be reached" in resp.json()["error_description"]
    assert time.monotonic() - started < 5


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_bodies_stream_through_in_both_directions_without_being_held_whole(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url)
    httpx.get(f"{local}/warm", timeout=10)
    before = _peak_rss_kib(sc.proc.pid)
    size = 96 * 1024 * 1024
    block = b"0123456789abcdef" * 4096
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            digest.update(block)
            yield block

    seen = httpx.put(f"{local}/upload", content=body(), headers={"Content-Length": str(size)}, timeout=60).json()
    assert (seen["body_bytes"], seen["body_sha256"]) == (size, digest.hexdigest())
    received = 0
    with httpx.stream("GET", f"{local}/big?bytes={size}", timeout=60) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_bytes():
            received += len(chunk)
    assert received == size
    grown_mib = (_peak_rss_kib(sc.proc.pid) - before) / 1024
    assert grown_mib < 32, f"the sidecar's peak memory grew by {grown_mib:.0f} MiB for {size >> 20} MiB bodies"


def test_keep_alive_requests_are_not_held_back_by_delayed_acks(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    # With Nagle's algorithm left on, every answer on a reused connection waits ~40 ms for an ACK.
    _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url)
    with httpx.Client(timeout=10) as client:
        client.get(f"{local}/warm")
        took = []
        for _ in range(21):
            started = time.perf_counter()
            assert client.get(f"{local}/orders").status_code == 200
            took.append(time.perf_counter() - started)
    assert sorted(took)[10] < 0.03, f"median {sorted(took)[10] * 1000:.0f} ms"


def test_oversized_request_headers_are_refused_with_431(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url)
    resp = httpx.get(f"{local}/orders", headers={"X-Big": "a" * 20000}, timeout=10)
    assert resp.status_code == 431


def test_request_headers_that_never_finish_are_cut_off(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    _, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url)
    port = int(local.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(b"GET /orders HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 15


def test_a_bad_upstream_url_stops_the_sidecar_at_start_with_the_variable_named(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    with pytest.raises(RuntimeError, match=f"{ENV_UPSTREAM_URL_PREFIX}{SUFFIX}"):
        start_forwarding(make_sidecar, broker.url, sa_token_file, "ftp://payments.example/")


@pytest.mark.parametrize("with_dpop", [False, True], ids=["bearer", "dpop"])
def test_the_real_access_proxy_accepts_what_the_sidecar_forwards(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_proxy: Callable[..., ProxyProcess], make_sidecar: Callable[..., SidecarProcess], tmp_path: Path,
        with_dpop: bool) -> None:
    opa = make_opa(SHIPPED_POLICIES)
    broker = broker_factory(opa.url)
    app = Upstream().start()
    try:
        proxy = make_proxy(broker, ["orders-api"], upstream=app.url, opa_url=opa.url)
        sa = tmp_path / "app-sa"
        sa.write_text(broker.mint("demo", "demo-app"))
        sc, local = start_forwarding(make_sidecar, broker.url, sa, proxy.url, audience="orders-api",
                                     dpop=with_dpop)
        claims = jwt.decode(sc.token_file("orders-api").read_text(), options={"verify_signature": False})
        assert ("cnf" in claims) == with_dpop
        for _ in range(2):  # a second request needs a proof of its own: the proxy spends each once
            resp = httpx.get(f"{local}/orders/42", headers={"Authorization": "Bearer forged"}, timeout=10)
            assert resp.status_code == 200, resp.text
            seen = dict(resp.json()["headers"])
            assert resp.json()["path"] == "/orders/42"
            assert seen["x-jitmesh-subject"] == "system:serviceaccount:demo:demo-app"
    finally:
        app.stop()


# -- DPoP ------------------------------------------------------------------------------------


def _cnf_jkt(broker: Any, token: str) -> str:
    jkt = verified_claims(broker, token).get("cnf", {}).get("jkt")
    assert isinstance(jkt, str), "the token is not DPoP-bound"
    return jkt


def test_a_dpop_sidecar_holds_bound_tokens_and_its_proofs_pass_the_rfc_9449_check(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={AUDIENCE: ["read"]}, sa_token_file=sa_token_file,
                      extra={ENV_DPOP: "true"})
    wait_for(sc.ready, what="/readyz")
    htu = "https://payments.example/api/orders?page=2"
    answer = httpx.post(f"{sc.url}/v1/dpop", json={"audience": AUDIENCE, "htm": "POST", "htu": htu},
                        timeout=5).json()
    assert answer["access_token"] == sc.token_file(AUDIENCE).read_text()
    checked = dpop.check_proof(answer["dpop"], htm="POST", htu=htu, now=time.time(), window=60,
                               access_token=answer["access_token"], jkt=_cnf_jkt(broker, answer["access_token"]))
    again = httpx.post(f"{sc.url}/v1/dpop", json={"audience": AUDIENCE, "htm": "POST", "htu": htu},
                       timeout=5).json()
    assert dpop.check_proof(again["dpop"], htm="POST", htu=htu, now=time.time(), window=60).jti != checked.jti


def test_a_dpop_sidecar_forwards_a_fresh_proof_for_each_outbound_request(
        broker: Any, sa_token_file: Path, upstream: EchoUpstream,
        make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc, local = start_forwarding(make_sidecar, broker.url, sa_token_file, upstream.url + "/api", dpop=True)
    jtis = set()
    for _ in range(2):
        seen = httpx.put(f"{local}/orders/7?x=1", content=b"{}", headers={"DPoP": "forged"}, timeout=10).json()
        scheme, _, token = seen["authorization"].partition(" ")
        assert scheme == "DPoP" and token == sc.token_file(AUDIENCE).read_text()
        checked = dpop.check_proof(seen["dpop"], htm="PUT", htu=f"{upstream.url}/api/orders/7", now=time.time(),
                                   window=60, access_token=token, jkt=_cnf_jkt(broker, token))
        jtis.add(checked.jti)
    assert len(jtis) == 2


def _private_scalar_candidates(text: str) -> list[str]:
    """JWK `d` members and PEM private keys anywhere in `text`."""
    found = [m for m in ("PRIVATE KEY",) if m in text]
    found += re.findall(r"[\"']d[\"']\s*:\s*[\"'][A-Za-z0-9_-]{40,}", text)
    return found


def test_the_dpop_key_is_in_no_token_file_and_no_log_line(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={AUDIENCE: ["read"]}, sa_token_file=sa_token_file,
                      extra={ENV_DPOP: "true"})
    wait_for(lambda: any(e.get("event") == "dpop.key_ready" for e in sc.events()), what="the key made")
    wait_for(sc.ready, what="/readyz")  # a bound token is on disk
    token = sc.token_file(AUDIENCE).read_text()
    assert _cnf_jkt(broker, token)
    texts = [sc.output()] + [p.read_text(errors="replace") for p in sc.token_dir.rglob("*") if p.is_file()]
    texts += [json.dumps(jwt.get_unverified_header(token)), json.dumps(jwt.decode(token, options={
        "verify_signature": False}))]
    for text in texts:
        assert _private_scalar_candidates(text) == []
    jkt = next(e["jkt"] for e in sc.events() if e.get("event") == "dpop.key_ready")
    assert jkt == _cnf_jkt(broker, token)  # only the public key's thumbprint is logged
    # A P-256 scalar is 32 bytes: 43 base64url characters or 64 hex digits. The only such
    # strings in the log are the thumbprint (and no 64-digit hex at all).
    assert set(re.findall(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", sc.output())) <= {jkt}
    assert re.findall(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])", sc.output()) == []


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"not json", 400, "not JSON"),
    (b"[]", 400, "JSON object"),
    (json.dumps({"audience": "nope", "htm": "GET", "htu": "https://a.example/x"}).encode(), 400, "nope"),
    (json.dumps({"audience": AUDIENCE, "htm": "GET", "htu": "/relative"}).encode(), 400, "absolute"),
    (json.dumps({"audience": AUDIENCE, "htm": "GET", "htu": "ftp://a.example/x"}).encode(), 400, "http or https"),
    (json.dumps({"audience": AUDIENCE, "htm": "GE T", "htu": "https://a.example/x"}).encode(), 400, "method"),
])
def test_dpop_endpoint_refuses_bad_requests_with_a_clear_400(
        tmp_path: Path, make_sidecar: Callable[..., SidecarProcess], body: bytes, status: int, needle: str) -> None:
    sa = tmp_path / "sa"
    sa.write_text("unused")
    sc = make_sidecar(broker_url=f"http://127.0.0.1:{free_port()}", audiences={AUDIENCE: []}, sa_token_file=sa,
                      extra={ENV_DPOP: "true"})
    resp = httpx.post(f"{sc.url}/v1/dpop", content=body, timeout=5)
    assert resp.status_code == status and needle in resp.json()["error_description"]


def test_dpop_endpoint_is_503_while_no_token_is_held(tmp_path: Path,
                                                     make_sidecar: Callable[..., SidecarProcess]) -> None:
    sa = tmp_path / "sa"
    sa.write_text("unused")
    sc = make_sidecar(broker_url=f"http://127.0.0.1:{free_port()}", audiences={AUDIENCE: []}, sa_token_file=sa,
                      extra={ENV_DPOP: "true"})
    resp = httpx.post(f"{sc.url}/v1/dpop", json={"audience": AUDIENCE, "htm": "GET", "htu": "https://a.example/"},
                      timeout=5)
    assert resp.status_code == 503 and resp.json()["error"] == "token_unavailable"


def test_dpop_endpoint_without_dpop_says_how_to_turn_it_on(
        tmp_path: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sa = tmp_path / "sa"
    sa.write_text("unused")
    sc = make_sidecar(broker_url=f"http://127.0.0.1:{free_port()}", audiences={AUDIENCE: []}, sa_token_file=sa)
    resp = httpx.post(f"{sc.url}/v1/dpop", json={"audience": AUDIENCE, "htm": "GET", "htu": "https://a.example/"},
                      timeout=5)
    assert resp.status_code == 404 and "jitmesh.io/dpop" in resp.json()["error_description"]
