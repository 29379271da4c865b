"""Brokered PostgreSQL logins (docs/contract.md §9) against a real PostgreSQL, a real broker and
a real OPA on the shipped policy: what a login is, what it may read, and how the broker
answers when the database cannot make one."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from jitmesh import dpop
from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.dblogins_support import PREFIX, SHIPPED, Target, make_target

PG = "urn:jitmesh:token-type:postgresql"
POD = PodRef("api-7d9c", "5d1e0000-0000-4000-8000-0000000000d1")


@pytest.fixture(scope="module")
def target(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Target:
    return make_target(postgres_server, tmp_path_factory.mktemp("target"), admin_pool=3)


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle],
           target: Target) -> BrokerHandle:
    return module_broker_factory(module_make_opa(SHIPPED).url, targets_file=str(target.targets_file))


def login(broker: BrokerHandle, namespace: str = "orders", scope: str = "read", **form: str) -> httpx.Response:
    return broker.exchange(broker.mint(namespace, "api", pod=POD), "orders-db", scope=scope,
                           requested_token_type=PG, **form)


def connect(body: dict[str, Any]) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host=body["host"], port=body["port"], dbname=body["dbname"], user=body["username"],
                           password=body["access_token"], autocommit=True, connect_timeout=5)


def test_a_login_answer_carries_the_connection_fields(broker: BrokerHandle, target: Target) -> None:
    r = login(broker)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == PG and body["token_type"] == "N_A"
    assert body["username"].startswith(PREFIX)
    assert (body["host"], body["port"], body["dbname"]) == ("127.0.0.1", target.server.port, target.dbname)
    assert body["scope"] == "read" and 0 < body["expires_in"] <= 600
    assert len(body["access_token"]) >= 43  # 32 random bytes, base64url


def test_the_login_connects_and_reads_what_its_scope_grants(broker: BrokerHandle) -> None:
    with connect(login(broker).json()) as conn:
        assert conn.execute("SELECT item FROM orders").fetchall() == [("tea",)]


def test_a_table_the_scope_does_not_grant_is_refused_by_postgresql(broker: BrokerHandle) -> None:
    with connect(login(broker).json()) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM payroll")


def test_the_role_is_a_member_of_exactly_the_granted_scopes_roles_with_expiry_and_limit(
        broker: BrokerHandle, target: Target) -> None:
    body = login(broker, namespace="orders", scope="write").json()
    with target.admin() as conn:
        members = {r[0] for r in conn.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (body["username"],))}
        until, limit, can_login = conn.execute(
            "SELECT extract(epoch FROM rolvaliduntil), rolconnlimit, rolcanlogin FROM pg_roles WHERE rolname = %s",
            (body["username"],)).fetchone() or (None, None, None)
    assert members == {target.read_role, target.write_role}
    assert can_login and limit == 2
    assert abs(float(until) - (time.time() + body["expires_in"])) < 5  # type: ignore[arg-type]


def test_the_connection_limit_is_enforced_by_postgresql(broker: BrokerHandle) -> None:
    body = login(broker).json()
    with connect(body), connect(body), pytest.raises(psycopg.OperationalError, match="too many connections"):
        connect(body)


def test_a_login_for_an_audience_that_is_no_database_target_is_invalid_target(broker: BrokerHandle) -> None:
    r = broker.exchange(broker.mint("payments", "api", pod=POD), "ledger", scope="read", requested_token_type=PG)
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"
    assert "orders-db" in r.json()["error_description"]


def test_a_denied_request_makes_no_role(broker: BrokerHandle, target: Target) -> None:
    before = set(target.logins())
    r = login(broker, namespace="hr")
    assert r.status_code in (400, 403), r.text
    assert set(target.logins()) == before


def test_a_hundred_concurrent_issuances_stay_within_the_admin_pool_bound(broker: BrokerHandle,
                                                                          target: Target) -> None:
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        with target.admin() as conn:
            while not done.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                   "'jitmesh-broker' AND datname = %s", (target.dbname,)).fetchone()
                peak = max(peak, int(row[0]) if row else 0)
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    tokens = [broker.mint("orders", "api", pod=POD) for _ in range(100)]
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda t: broker.exchange(t, "orders-db", scope="read",
                                                            requested_token_type=PG).status_code, tokens))
    finally:
        done.set()
        watcher.join()
    assert codes.count(200) == 100, codes
    assert 1 <= peak <= 3


def test_a_database_that_is_down_gives_503_and_no_role(make_opa: Callable[..., Any],
                                                       broker_factory: Callable[..., BrokerHandle],
                                                       make_postgres_server: Callable[[], PostgresServer],
                                                       tmp_path: Path) -> None:
    target = make_target(make_postgres_server(), tmp_path / "down", timeout=1.0)
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    target.server.stop()
    r = login(broker)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable" and "retry-after" in r.headers
    target.server.start()
    assert target.logins() == []


def test_the_login_needs_its_password(broker: BrokerHandle) -> None:
    body = login(broker).json()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect({**body, "access_token": body["access_token"][:-1] + "x"})


def test_a_database_slower_than_the_bound_gives_503_and_no_role(make_opa: Callable[..., Any],
                                                                broker_factory: Callable[..., BrokerHandle],
                                                                make_postgres_server: Callable[[], PostgresServer],
                                                                tmp_path: Path) -> None:
    target = make_target(make_postgres_server(), tmp_path / "slow", timeout=1.0)
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    assert login(broker).status_code == 200  # the admin pool holds a connection that will hang
    target.server.freeze()
    try:
        r = login(broker)
    finally:
        target.server.thaw()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable"
    time.sleep(1.0)  # a statement the server took before it froze is cut by its own statement_timeout
    assert len(target.logins()) == 1  # only the first login



def test_the_database_is_sent_a_scram_verifier_never_the_password(make_opa: Callable[..., Any],
                                                                  broker_factory: Callable[..., BrokerHandle],
                                                                  make_postgres_server: Callable[[], PostgresServer],
                                                                  tmp_path: Path) -> None:
    target = make_target(make_postgres_server(), tmp_path / "logged")
    with target.admin() as conn:  # the server logs every DDL statement the broker's sessions send
        conn.execute(f'ALTER DATABASE "{target.dbname}" SET log_statement = \'ddl\'')
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    body = login(broker).json()
    with connect(body) as session:  # the server checks the password against the verifier it was sent
        assert session.execute("SELECT current_user").fetchone() == (body["username"],)
    log = target.server.output()
    assert f"CREATE ROLE \"{body['username']}\"" in log and "SCRAM-SHA-256$4096:" in log
    assert body["access_token"] not in log


def test_a_refresh_rotates_the_password_and_extends_valid_until_of_the_same_role(broker: BrokerHandle,
                                                                                target: Target) -> None:
    first = broker.exchange(broker.mint("orders", "api", pod=POD), "orders-db", scope="read", ttl=60,
                            requested_token_type=PG).json()
    session = connect(first)

    def valid_until() -> float:
        with target.admin() as conn:
            row = conn.execute("SELECT extract(epoch FROM rolvaliduntil)::float8 FROM pg_roles WHERE rolname = %s",
                               (first["username"],)).fetchone()
        assert row is not None
        return float(row[0])
    before = valid_until()
    second = broker.exchange(broker.mint("orders", "api", pod=POD), "orders-db", scope="read", ttl=240,
                             requested_token_type=PG, refresh_login=first["username"]).json()
    assert second["username"] == first["username"] and second["access_token"] != first["access_token"]
    assert valid_until() >= before + 150
    assert session.execute("SELECT item FROM orders").fetchall() == [("tea",)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(first)
    connect(second).close()
    session.close()


def test_a_bad_targets_file_stops_the_broker_at_start_naming_the_key(
        module_make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target,
        tmp_path: Path) -> None:
    doc = yaml.safe_load(target.targets_file.read_text())
    doc["targets"]["orders-db"]["connection_limit"] = 0
    bad = target.targets_file.parent / "bad-targets.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(RuntimeError, match=r"targets\.orders-db\.connection_limit"):
        broker_factory(module_make_opa(SHIPPED).url, targets_file=str(bad), timeout=15)


def test_a_dpop_proof_with_a_login_request_binds_nothing_and_says_so(broker: BrokerHandle) -> None:
    # a password cannot be bound to a key: the proof is checked and spent, the answer stays N_A
    key = dpop.new_key()
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token_type":
            "urn:ietf:params:oauth:token-type:jwt", "subject_token": broker.mint("orders", "api", pod=POD),
            "audience": "orders-db", "scope": "read", "requested_token_type": PG}
    proof = dpop.make_proof(key, "POST", f"{broker.url}/token")
    r = httpx.post(f"{broker.url}/token", data=data, headers={"DPoP": proof}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "N_A" and r.json()["issued_token_type"] == PG
    again = httpx.post(f"{broker.url}/token", data={**data, "subject_token": broker.mint("orders", "api", pod=POD)},
                       headers={"DPoP": proof}, timeout=10)
    assert again.status_code == 400 and again.json()["error"] == "invalid_dpop_proof"
