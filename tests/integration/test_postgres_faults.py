"""PostgreSQL restarted under the broker's feet: calls fail fast with StoreError while it
is down, work again by themselves once it is back, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from pdp.store import AuditRecord, Revocation, StoreError
from pdp.store.postgres import PostgresStore
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.postgres

CALL_TIMEOUT = 2.0       # the store's own bound on waiting for a connection
OUTAGE = 1.5             # seconds the server stays down
RECOVERY_LIMIT = 15.0    # seconds after the restart within which writes must work again


def record(decision_id: str) -> AuditRecord:
    return AuditRecord(decision_id=decision_id, time=time.time(), event="issued", subject="sa", audience="db",
                       details={"id": decision_id})


async def retry_until_ok(call: Callable[[], object], limit: float) -> float:
    """Seconds until `call()` first succeeds; fails the test after `limit`."""
    started = time.monotonic()
    while True:
        try:
            await call()  # type: ignore[misc]
            return time.monotonic() - started
        except StoreError:
            if time.monotonic() - started > limit:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("shutdown", ["fast", "immediate"])
def test_audit_writes_fail_fast_during_a_restart_resume_by_themselves_and_lose_nothing_acknowledged(
        make_postgres_server: Callable[[], PostgresServer], shutdown: str) -> None:
    server = make_postgres_server()
    url = server.create_database()
    acknowledged: list[str] = []
    failures: list[tuple[float, BaseException]] = []   # (monotonic time, error)
    durations: list[float] = []

    async def main() -> tuple[float, float, float]:
        store = PostgresStore(url, timeout=CALL_TIMEOUT)
        await store.open()
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    written = await store.append_audit(record(f"w{w}-{n}"))
                    acknowledged.append(written.decision_id)
                except StoreError as exc:
                    failures.append((time.monotonic(), exc))
                    await asyncio.sleep(0.05)
                except Exception as exc:  # anything but StoreError is a contract breach
                    failures.append((time.monotonic(), exc))
                durations.append(time.monotonic() - started)
                n += 1

        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        await asyncio.sleep(0.5)
        down = time.monotonic()
        await asyncio.to_thread(server.stop, shutdown)
        await asyncio.sleep(OUTAGE)
        with pytest.raises(StoreError):
            await store.ping()
        await asyncio.to_thread(server.start)
        up = time.monotonic()
        recovered = await retry_until_ok(lambda: store.append_audit(record("after-restart")), RECOVERY_LIMIT)
        acknowledged.append("after-restart")
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*writers)
        await store.close()
        return down, up, recovered

    down, up, recovered = asyncio.run(main())

    assert all(isinstance(exc, StoreError) for _, exc in failures), failures
    assert any(down <= t <= up + 0.5 for t, _ in failures), "writes during the outage should have failed"
    assert max(durations) < 2 * CALL_TIMEOUT + 1.0, "a write hung past the store's bound"
    assert recovered < RECOVERY_LIMIT
    with psycopg.connect(url) as conn:
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM audit")}
    assert set(acknowledged) <= stored, f"lost {len(set(acknowledged) - stored)} acknowledged records"
    assert len(acknowledged) > 20


def test_revocations_survive_a_restart_and_waiters_hear_new_ones_afterwards(
        make_postgres_server: Callable[[], PostgresServer]) -> None:
    server = make_postgres_server()
    url = server.create_database()

    def revocation(rid: str) -> Revocation:
        return Revocation(id=rid, kind="pod_uid", value=f"uid-{rid}", reason="pod deleted",
                          created_at=time.time(), created_by="broker")

    async def main() -> tuple[object, list[str], float]:
        replica_a, replica_b = PostgresStore(url, timeout=CALL_TIMEOUT), PostgresStore(url, timeout=CALL_TIMEOUT)
        await replica_a.open()
        await replica_b.open()
        before = await replica_b.add_revocation(revocation("before"))
        await asyncio.to_thread(server.restart)
        await retry_until_ok(replica_b.ping, RECOVERY_LIMIT)
        await retry_until_ok(replica_a.ping, RECOVERY_LIMIT)
        kept = await replica_a.get_revocation("before")
        waiter = asyncio.create_task(replica_a.wait_revocation_events(before.seq, timeout=10))
        await asyncio.sleep(0.3)
        written = time.monotonic()
        await replica_b.add_revocation(revocation("after"))
        events = await waiter
        latency = time.monotonic() - written
        await replica_a.close()
        await replica_b.close()
        return kept, [e.revocation.id for e in events], latency

    kept, ids, latency = asyncio.run(main())
    assert kept is not None and kept.id == "before"
    assert ids == ["after"]
    assert latency < 0.5


def test_calls_to_a_hung_server_fail_within_the_call_bound_and_work_again_when_it_answers(
        make_postgres_server: Callable[[], PostgresServer]) -> None:
    server = make_postgres_server()
    url = server.create_database()

    async def main() -> tuple[list[float], float]:
        store = PostgresStore(url, timeout=1.0, statement_timeout=1.0)
        await store.open()
        await store.append_audit(record("before"))
        await asyncio.to_thread(server.freeze)
        try:
            took = []
            for call in (lambda: store.append_audit(record("frozen")), store.ping, store.list_keys):
                started = time.monotonic()
                with pytest.raises(StoreError, match=r"no answer|not acknowledged|no working connection"):
                    await call()
                took.append(time.monotonic() - started)
        finally:
            server.thaw()
        recovered = await retry_until_ok(lambda: store.append_audit(record("thawed")), RECOVERY_LIMIT)
        await store.close()
        return took, recovered

    took, recovered = asyncio.run(main())
    assert max(took) < 1.0 + 1.0 + 1.0 + 0.5  # timeout + statement_timeout + 1 s, and a little slack
    assert recovered < RECOVERY_LIMIT
