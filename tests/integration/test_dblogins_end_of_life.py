"""How brokered PostgreSQL logins end (docs/contract.md §9), against a real PostgreSQL and a
real broker: a revocation of any kind and expiry terminate open sessions and drop the role
(objects it made reassigned to the owner), and the sweep drops what a crashed broker left."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from jitmesh.devissuer import PodRef
from pdp.dblogins.postgres import LoginOwner, PostgresLogins
from pdp.dblogins.targets import load_targets
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.dblogins_support import PREFIX, SHIPPED, Target, make_target

PG = "urn:jitmesh:token-type:postgresql"


@pytest.fixture
def target(postgres_server: PostgresServer, tmp_path: Path) -> Target:
    return make_target(postgres_server, tmp_path / "target")


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target) -> BrokerHandle:
    return broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))


def issue(broker: BrokerHandle, pod: PodRef, ttl: int | None = None, scope: str = "read") -> dict[str, Any]:
    r = broker.exchange(broker.mint("orders", "api", pod=pod), "orders-db", scope=scope, ttl=ttl,
                        requested_token_type=PG)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def connect(body: dict[str, Any]) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(host=body["host"], port=body["port"], dbname=body["dbname"], user=body["username"],
                           password=body["access_token"], autocommit=True, connect_timeout=5)


def session_ended(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def a_pod() -> PodRef:
    return PodRef(f"api-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()))


@pytest.mark.parametrize("kind", ["jti", "subject", "pod_uid", "audience"])
def test_a_revocation_ends_the_open_session_within_a_second_and_drops_the_role(
        broker: BrokerHandle, target: Target, kind: str) -> None:
    pod = a_pod()
    body = issue(broker, pod)
    conn = connect(body)
    value = {"jti": body["username"][len(PREFIX):], "subject": "system:serviceaccount:orders:api",
             "pod_uid": pod.uid, "audience": "orders-db"}[kind]
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                   json={kind: value, "reason": "test"}, timeout=10)
    assert r.status_code == 201, r.text
    assert target.wait_gone(body["username"], within=1.0)
    assert session_ended(conn)
    with pytest.raises(psycopg.OperationalError):
        connect(body)


def test_a_revocation_of_another_pod_leaves_the_login(broker: BrokerHandle, target: Target) -> None:
    body = issue(broker, a_pod())
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                   json={"pod_uid": str(uuid.uuid4()), "reason": "test"}, timeout=10)
    assert r.status_code == 201
    time.sleep(0.5)
    with connect(body) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)


def test_objects_a_login_made_are_reassigned_to_the_owner_when_it_is_revoked(broker: BrokerHandle,
                                                                            target: Target) -> None:
    body = issue(broker, a_pod(), scope="write")
    with connect(body) as conn:
        conn.execute("CREATE TABLE made_by_login (id int)")
    httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
               json={"jti": body["username"][len(PREFIX):], "reason": "test"}, timeout=10)
    assert target.wait_gone(body["username"], within=2.0)
    with target.admin() as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_login'").fetchone()
    assert owner == (target.owner,)


def test_expiry_ends_the_open_session_and_drops_the_role(broker: BrokerHandle, target: Target) -> None:
    body = issue(broker, a_pod(), ttl=2)
    conn = connect(body)
    assert target.wait_gone(body["username"], within=6.0)
    assert session_ended(conn)


def _leave_role(target: Target, issued_ago: float, ttl: float) -> str:
    """What a broker killed between creating a login and recording it leaves behind."""
    logins = PostgresLogins(load_targets(str(target.targets_file)).postgresql["orders-db"])
    now = time.time()
    owner = LoginOwner(jti=uuid.uuid4().hex, subject="system:serviceaccount:orders:api", pod_uid=None,
                       audience="orders-db", scopes=("read",), decision_id=str(uuid.uuid4()),
                       issued_at=now - issued_ago, expires_at=now - issued_ago + ttl)

    async def make() -> str:
        await logins.open()
        try:
            return (await logins.create(owner)).username
        finally:
            await logins.close()
    return asyncio.run(make())


def test_a_role_created_but_never_recorded_is_dropped_by_the_sweep_at_start(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target) -> None:
    unrecorded = _leave_role(target, issued_ago=300, ttl=3600)
    expired = _leave_role(target, issued_ago=300, ttl=60)
    assert target.role_exists(unrecorded) and target.role_exists(expired)
    broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    assert target.wait_gone(unrecorded, within=5.0)
    assert target.wait_gone(expired, within=5.0)


def test_the_sweep_keeps_a_recorded_login(make_opa: Callable[..., Any],
                                          broker_factory: Callable[..., BrokerHandle], target: Target) -> None:
    opa = make_opa(SHIPPED)
    first = broker_factory(opa.url, targets_file=str(target.targets_file))
    body = issue(first, a_pod())
    first.restart()
    time.sleep(1.0)
    assert target.role_exists(body["username"])


def test_an_audience_revocation_ends_every_login_of_the_audience(broker: BrokerHandle, target: Target) -> None:
    bodies = [issue(broker, a_pod()) for _ in range(8)]
    sessions = [connect(b) for b in bodies]
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                   json={"audience": "orders-db", "reason": "test"}, timeout=10)
    assert r.status_code == 201
    assert all(target.wait_gone(b["username"], within=3.0) for b in bodies)
    assert all(session_ended(s) for s in sessions)


def test_a_revocation_made_while_the_login_is_being_made_refuses_it_and_drops_the_role(
        broker: BrokerHandle, target: Target) -> None:
    before = set(target.logins())
    with target.admin() as lock, concurrent.futures.ThreadPoolExecutor(1) as pool:
        lock.execute("BEGIN")
        lock.execute("LOCK TABLE pg_authid IN ACCESS EXCLUSIVE MODE")  # CREATE ROLE waits on this
        asking = pool.submit(broker.exchange, broker.mint("orders", "api", pod=a_pod()), "orders-db", scope="read",
                             requested_token_type=PG)
        time.sleep(0.5)
        r = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                       json={"subject": "system:serviceaccount:orders:api", "reason": "test"}, timeout=10)
        assert r.status_code == 201
        lock.execute("COMMIT")
        answer = asking.result(timeout=20)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    deadline = time.monotonic() + 3
    while set(target.logins()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(target.logins()) == before
