"""A real sidecar asking a real broker for a PostgreSQL login (docs/contract.md §9): the libpq
URI and the pgpass file it writes connect to a real PostgreSQL, and a refresh rotates the
password and extends the login while an open session goes on."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.dblogins_support import PREFIX, SHIPPED, Target, make_target

POD = PodRef("api-5c1e", "5d1e0000-0000-4000-8000-0000000000e7")
KIND = {"JITMESH_KIND_ORDERS_DB": "postgresql"}


@pytest.fixture
def target(postgres_server: PostgresServer, tmp_path: Path) -> Target:
    return make_target(postgres_server, tmp_path / "target")


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target) -> BrokerHandle:
    return broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))


def start_sidecar(make_sidecar: Callable[..., SidecarProcess], broker: BrokerHandle, tmp_path: Path,
                  **extra: str) -> SidecarProcess:
    sa_file = tmp_path / "sa-token"
    sa_file.write_text(broker.mint("orders", "api", pod=POD))
    return make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_file,
                        extra={**KIND, **extra})


def wait_file(path: Path, differs_from: str | None = None, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if text and text != differs_from:
                return text
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written (anew) within {within}s")


def test_the_sidecar_writes_a_uri_that_connects_and_reads_what_the_scope_grants(
        broker: BrokerHandle, target: Target, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    uri = wait_file(sc.token_file("orders-db"))
    assert uri.startswith(f"postgresql://{PREFIX}")
    with psycopg.connect(uri, autocommit=True) as conn:
        assert conn.execute("SELECT item FROM orders").fetchall() == [("tea",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM payroll")


def test_the_pgpass_file_is_0600_and_libpq_connects_with_it(
        broker: BrokerHandle, target: Target, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    wait_file(sc.token_file("orders-db"))
    pgpass = sc.token_dir / "orders-db.pgpass"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    host, port, dbname, user, _ = pgpass.read_text().strip().split(":")
    assert (host, int(port), dbname) == ("127.0.0.1", target.server.port, target.dbname)
    with psycopg.connect(host=host, port=port, dbname=dbname, user=user, passfile=str(pgpass)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)


def test_a_refresh_keeps_the_open_session_and_the_next_connection_uses_the_new_password(
        broker: BrokerHandle, target: Target, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path, JITMESH_TTL="10", JITMESH_REFRESH_AFTER="0.2-0.3")
    path = sc.token_file("orders-db")
    first = wait_file(path)
    session = psycopg.connect(first, autocommit=True)
    second = wait_file(path, differs_from=first)
    user_of = lambda uri: uri.split("//", 1)[1].split(":", 1)[0]  # noqa: E731
    assert user_of(second) == user_of(first)  # the same login, rotated
    assert session.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    with psycopg.connect(second) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(first)
    session.close()


APP_UID = 4321  # the app's user, which the injector runs the sidecar as when a pod asks for a login


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="jitmesh-pgpass-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="running the sidecar as another user needs root and setpriv")
def test_the_pgpass_file_belongs_to_the_user_the_sidecar_runs_as_and_that_user_connects_with_it(
        broker: BrokerHandle, target: Target, shared_dir: Path) -> None:
    sa_file = shared_dir / "sa-token"
    sa_file.write_text(broker.mint("orders", "api", pod=POD))
    sa_file.chmod(0o644)
    token_dir = shared_dir / "tokens"
    token_dir.mkdir()
    os.chown(token_dir, APP_UID, APP_UID)
    sc = SidecarProcess(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_file,
                        token_dir=token_dir, log_path=shared_dir / "sidecar.log",
                        extra={**KIND, "JITMESH_TOKEN_GROUP": str(APP_UID)})
    as_app = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups"]
    sc.argv = as_app + sc.argv
    sc.start()
    try:
        wait_file(sc.token_file("orders-db"))
        pgpass = token_dir / "orders-db.pgpass"
        st = pgpass.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, APP_UID)
        connect = ("import psycopg, sys\n"
                   "with psycopg.connect(host='127.0.0.1', port=sys.argv[1], dbname=sys.argv[2], "
                   "user=sys.argv[3], passfile=sys.argv[4]) as c:\n"
                   "    print(c.execute('SELECT item FROM orders').fetchone()[0])\n")
        user = pgpass.read_text().split(":")[3]
        done = subprocess.run([*as_app, sys.executable, "-c", connect, str(target.server.port), target.dbname,
                               user, str(pgpass)], capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout.strip()) == (0, "tea"), done.stderr[-2000:]
    finally:
        sc.stop(timeout=5)


def test_sigterm_revokes_the_login_so_its_open_session_ends_and_its_role_is_dropped(
        broker: BrokerHandle, target: Target, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    uri = wait_file(sc.token_file("orders-db"))
    username = uri.split("//", 1)[1].split(":", 1)[0]
    session = psycopg.connect(uri, autocommit=True)
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGTERM)
    assert sc.proc.wait(timeout=10) == 0
    assert target.wait_gone(username, within=2.0)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    audit = httpx.get(f"{broker.url}/v1/admin/audit", params={"event": "revoked"}, headers=broker.admin_headers(),
                      timeout=10).json()
    assert any(r.get("jti") == username[len(PREFIX):] for r in audit["records"]), audit


def test_a_revocation_naming_the_login_without_its_password_leaves_it(
        broker: BrokerHandle, target: Target, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    uri = wait_file(sc.token_file("orders-db"))
    username = uri.split("//", 1)[1].split(":", 1)[0]
    r = httpx.post(f"{broker.url}/revoke", data={"token": "not-its-password", "username": username,
                                                  "token_type_hint": "urn:jitmesh:token-type:postgresql"},
                   timeout=10)
    assert r.status_code == 200
    assert target.role_exists(username)
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
