"""A real sidecar against a real broker and a real OPA: issuance, refresh, the local API,
SIGTERM revocation, and bad configuration at start."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess, sidecar_argv, sidecar_env

POLICIES = Path(__file__).parent / "sidecar_policies"


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., Any]) -> Any:
    return broker_factory(make_opa(POLICIES).url)


@pytest.fixture
def sa_token_file(broker: Any, tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text(broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"), ttl=3600))
    return path


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def verified_claims(broker: Any, token: str, audience: str) -> dict[str, Any]:
    jwks = jwt.PyJWKSet.from_dict(httpx.get(f"{broker.url}/jwks", timeout=5).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return dict(jwt.decode(token, key, algorithms=["ES256"], audience=audience))


def test_sidecar_writes_broker_issued_tokens_for_every_audience(broker: Any, sa_token_file: Path,
                                                               make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"], "payments-api": []},
                      sa_token_file=sa_token_file, ttl=60)
    wait_for(sc.ready, what="/readyz")
    claims = verified_claims(broker, sc.token_file("orders-db").read_text(), "orders-db")
    assert claims["sub"] == "system:serviceaccount:payments:api" and claims["scope"] == "read"
    assert 55 <= claims["exp"] - claims["iat"] <= 60
    api = httpx.get(f"{sc.url}/v1/token/payments-api", timeout=5).json()
    assert api["access_token"] == sc.token_file("payments-api").read_text()
    assert api["expires_at"] <= verified_claims(broker, api["access_token"], "payments-api")["exp"]


def test_token_files_are_readable_by_owner_and_group_only_by_default(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file)
    wait_for(sc.ready, what="/readyz")
    assert stat.S_IMODE(sc.token_file("orders-db").stat().st_mode) == 0o640


def test_token_files_get_the_token_group(broker: Any, sa_token_file: Path,
                                         make_sidecar: Callable[..., SidecarProcess]) -> None:
    # a group other than the sidecar's own that it may give files: any, for root
    others = [g for g in os.getgroups() if g != os.getegid()]
    if os.geteuid() != 0 and not others:
        pytest.skip("this user is in no group besides its own")
    gid = 4242 if os.geteuid() == 0 else others[0]
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      extra={"JITMESH_TOKEN_GROUP": str(gid)})
    wait_for(sc.ready, what="/readyz")
    assert sc.token_file("orders-db").stat().st_gid == gid


def introspect(broker: Any, token: str) -> dict[str, Any]:
    r = httpx.post(f"{broker.url}/introspect", data={"token": token}, headers=broker.admin_headers(), timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sigterm_revokes_tokens_at_the_broker_removes_files_and_exits_0(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"], "payments-api": []},
                      sa_token_file=sa_token_file, ttl=300)
    wait_for(sc.ready, what="/readyz")
    tokens = [sc.token_file(a).read_text() for a in ("orders-db", "payments-api")]
    assert all(introspect(broker, t)["active"] is True for t in tokens)
    sent = time.monotonic()
    sc.signal(signal.SIGTERM)
    assert sc.proc is not None
    assert sc.proc.wait(timeout=10) == 0
    assert time.monotonic() - sent < 2.5
    assert list(sc.token_dir.iterdir()) == []
    assert [introspect(broker, t)["active"] for t in tokens] == [False, False]


def test_sigterm_with_the_broker_gone_still_removes_files_and_exits_0_quickly(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      ttl=300)
    wait_for(sc.ready, what="/readyz")
    broker.kill()
    sent = time.monotonic()
    sc.signal(signal.SIGTERM)
    assert sc.proc is not None
    assert sc.proc.wait(timeout=10) == 0
    assert time.monotonic() - sent < 2.5
    assert list(sc.token_dir.iterdir()) == []



@pytest.mark.parametrize(("variable", "value"), [
    ("JITMESH_AUDIENCES", ""),
    ("JITMESH_SA_TOKEN_FILE", "/nonexistent/jitmesh/sa-token"),
    ("JITMESH_BROKER_URL", "broker.jitmesh.svc:8443"),
    ("JITMESH_TTL", "five minutes"),
    ("JITMESH_LISTEN", "localhost"),
    ("JITMESH_TOKEN_DIR", "/proc/jitmesh-tokens"),
])
def test_bad_configuration_exits_nonzero_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    sa = tmp_path / "sa-token"
    sa.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    env = sidecar_env(broker_url="http://127.0.0.1:9", audiences={"orders-db": ["read"]}, sa_token_file=sa,
                      token_dir=tmp_path / "tokens", listen="127.0.0.1:9", extra={variable: value})
    done = subprocess.run(sidecar_argv(sys.executable), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert variable in done.stderr
    assert not (tmp_path / "tokens").exists()
    assert "Traceback" not in done.stderr


def test_listen_address_in_use_exits_nonzero_naming_the_variable(tmp_path: Path) -> None:
    sa = tmp_path / "sa-token"
    sa.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = sidecar_env(broker_url="http://127.0.0.1:9", audiences={"orders-db": []}, sa_token_file=sa,
                          token_dir=tmp_path / "tokens", listen=f"127.0.0.1:{port}")
        done = subprocess.run(sidecar_argv(sys.executable), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "JITMESH_LISTEN" in done.stderr
