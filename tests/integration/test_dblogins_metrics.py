"""The database logins on the broker's `/metrics` (a real broker, a real PostgreSQL): logins
issued and refreshed, ended by why, the admin pool, and failures by cause; and `/readyz`,
which is about the broker itself, so a target that is down leaves it ready."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.dblogins_support import PREFIX, SHIPPED, Target, make_target

PG = "urn:jitmesh:token-type:postgresql"
POD = PodRef("api-3e1a", "5d1e0000-0000-4000-8000-0000000000f3")


def login(broker: BrokerHandle, **form: str) -> httpx.Response:
    return broker.exchange(broker.mint("orders", "api", pod=POD), "orders-db", scope="read",
                           requested_token_type=PG, **form)


def samples(broker: BrokerHandle) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{broker.url}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def target(postgres_server: PostgresServer, tmp_path: Path) -> Target:
    return make_target(postgres_server, tmp_path / "target", admin_pool=3)


def test_issued_refreshed_and_revoked_logins_are_counted_and_the_admin_pool_is_shown(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target) -> None:
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    first = login(broker).json()
    assert login(broker, refresh_login=first["username"]).status_code == 200
    r = httpx.post(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                   json={"jti": first["username"][len(PREFIX):], "reason": "test"}, timeout=10)
    assert r.status_code == 201
    assert target.wait_gone(first["username"], within=2.0)
    found = samples(broker)
    assert value(found, "jitmesh_dblogins_issued_total", audience="orders-db", refreshed="false") == 1
    assert value(found, "jitmesh_dblogins_issued_total", audience="orders-db", refreshed="true") == 1
    assert value(found, "jitmesh_dblogins_ended_total", audience="orders-db", reason="revoked") == 1
    assert value(found, "jitmesh_dblogins_admin_pool_max", audience="orders-db") == 3
    assert value(found, "jitmesh_dblogins_admin_pool_in_use", audience="orders-db") == 0
    assert value(found, "jitmesh_dblogins_admin_pool_waiting", audience="orders-db") == 0


def test_a_target_that_is_down_is_a_counted_failure_and_leaves_the_broker_ready(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_postgres_server: Callable[[], PostgresServer], tmp_path: Path) -> None:
    target = make_target(make_postgres_server(), tmp_path / "down", timeout=1.0)
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    target.server.stop()
    assert login(broker).status_code == 503
    found = samples(broker)
    failed = {dict(labels)["cause"]: v for (name, labels), v in found.items()
              if name == "jitmesh_dblogins_failures_total" and dict(labels)["operation"] == "create"}
    assert sum(failed.values()) == 1 and set(failed) <= {"unreachable", "timeout"}, failed
    assert httpx.get(f"{broker.url}/readyz", timeout=10).status_code == 200


def test_a_target_that_refuses_the_admin_gives_503_no_role_and_a_refused_failure(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target) -> None:
    weak = f"weak_admin_{uuid.uuid4().hex[:8]}"
    with target.admin() as conn:
        conn.execute(f"CREATE ROLE \"{weak}\" LOGIN NOCREATEROLE PASSWORD 'weak-pw'")
    dsn = target.admin_url.replace("postgres@", f"{weak}:weak-pw@")
    (target.targets_file.parent / "admin.dsn").write_text(dsn + "\n")
    broker = broker_factory(make_opa(SHIPPED).url, targets_file=str(target.targets_file))
    # roles are the server's, and other tests' logins may still be there: this request adds none
    before = set(target.logins())
    r = login(broker)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable", r.text
    assert "permission denied" in r.json()["error_description"]
    assert set(target.logins()) == before
    assert value(samples(broker), "jitmesh_dblogins_failures_total", audience="orders-db", operation="create",
                 cause="refused") == 1
