"""A broker really killed (SIGKILL) between creating a PostgreSQL login and recording it
(docs/contract.md §9): the role it leaves is found and dropped by the next broker's sweep,
at its start when the role is past the unrecorded grace, else by the sweep that follows. The
audit table of a real PostgreSQL store is locked, so the broker holds a made role unrecorded."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.postgres import PostgresServer
from tests.integration.dblogins_support import SHIPPED, Target, make_target

PG = "urn:jitmesh:token-type:postgresql"
GRACE = 4.0
YOUNG_GRACE = 12.0


@pytest.fixture
def target(postgres_server: PostgresServer, tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    grace = getattr(request, "param", GRACE)
    return make_target(postgres_server, tmp_path / "target", timeout=2.0, unrecorded_grace=grace)


@pytest.fixture
def store_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database("store")


@pytest.fixture
def start_broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle], target: Target,
                 store_url: str) -> Iterator[Callable[[], BrokerHandle]]:
    opa = make_opa(SHIPPED)
    yield lambda: broker_factory(opa.url, targets_file=str(target.targets_file), store=store_url)


def kill_mid_issuance(broker: BrokerHandle, target: Target, store_url: str) -> str:
    """Ask for a login while the store's audit table is locked; SIGKILL the broker once the
    role exists (it is then waiting to record it). The role's name."""
    before = set(target.logins())
    with psycopg.connect(store_url, autocommit=True) as lock, concurrent.futures.ThreadPoolExecutor(1) as pool:
        lock.execute("BEGIN")
        lock.execute("LOCK TABLE audit IN EXCLUSIVE MODE")  # reads go on; the issuance's record waits
        asking = pool.submit(broker.exchange, broker.mint("orders", "api", pod=PodRef("api-1", str(uuid.uuid4()))),
                             "orders-db", scope="read", requested_token_type=PG)
        deadline = time.monotonic() + 4.0
        made: set[str] = set()
        while not made and time.monotonic() < deadline:
            made = set(target.logins()) - before
            time.sleep(0.01)
        assert made, "the broker made no role while its audit record was held back"
        broker.kill()
        lock.execute("COMMIT")
        with pytest.raises(Exception):  # noqa: B017 - the killed broker answers nothing
            asking.result(timeout=10).raise_for_status()
    (role,) = made
    return role


def test_a_role_left_by_a_broker_killed_before_recording_it_is_dropped_by_the_next_brokers_sweep_at_start(
        start_broker: Callable[[], BrokerHandle], target: Target, store_url: str) -> None:
    role = kill_mid_issuance(start_broker(), target, store_url)
    time.sleep(GRACE + 0.5)  # past the grace: no issuance anywhere can still be recording it
    assert target.role_exists(role)
    start_broker()
    assert target.wait_gone(role, within=3.0)


@pytest.mark.parametrize("target", [YOUNG_GRACE], indirect=True)
def test_a_young_unrecorded_role_outlives_the_sweep_at_start_and_the_next_sweep_drops_it(
        start_broker: Callable[[], BrokerHandle], target: Target, store_url: str) -> None:
    role = kill_mid_issuance(start_broker(), target, store_url)
    killed_at = time.monotonic()
    start_broker()
    time.sleep(1.0)
    assert time.monotonic() - killed_at < YOUNG_GRACE - 1, "the broker took too long to start for this test"
    assert target.role_exists(role)  # as young as an issuance still under way on another replica
    assert target.wait_gone(role, within=YOUNG_GRACE + 4.0)
