"""Durable audit appends per second with 32 concurrent writers, SQLite and PostgreSQL:
what the store lets the broker issue, since no token leaves before its audit record is
durable. PostgreSQL runs with fsync on, as in production.

    .venv/bin/python -m bench.store_bench [SECONDS]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pdp.store import AuditRecord, Store, open_store_from_url

WRITERS = 32


def _record(n: int) -> AuditRecord:
    return AuditRecord(decision_id=f"bench-{n}", time=time.time(), event="issued",
                       subject="system:serviceaccount:payments:api", audience="orders-db",
                       policy_path="jitmesh/authz/decision", jti=f"jti-{n}", pod_uid="5d1e",
                       details={"requested_scopes": ["read"], "granted_scopes": ["read"], "ttl_seconds": 300,
                                "reasons": [], "decision": {"allow": True, "scopes": ["read"]}})


async def _drive(url: str, seconds: float, writers: int) -> dict[str, float]:
    store: Store = open_store_from_url(url)
    await store.open()
    latencies: list[float] = []
    counter = 0
    try:
        for n in range(200):  # warm up: connections, prepared statements, page cache
            await store.append_audit(_record(-n - 1))
        deadline = time.perf_counter() + seconds

        async def writer() -> None:
            nonlocal counter
            while time.perf_counter() < deadline:
                counter += 1
                started = time.perf_counter()
                await store.append_audit(_record(counter))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    latencies.sort()
    return {
        "appends_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def run(seconds: float = 5.0) -> dict[str, Any]:
    """Both stores for `seconds` each; keys `<store>_appends_per_s`, `<store>_p50_ms`, `<store>_p99_ms`
    (PostgreSQL ones absent, with `postgres_unavailable` saying why, when it cannot be started)."""
    out: dict[str, Any] = {"writers": WRITERS}
    with tempfile.TemporaryDirectory(prefix="jitmesh-store-bench-") as tmp:
        sqlite = asyncio.run(_drive(f"sqlite:///{Path(tmp) / 'bench.db'}", seconds, WRITERS))
    out.update({f"sqlite_{k}": v for k, v in sqlite.items()})
    try:
        from tests.fixtures.postgres import PostgresServer

        server = PostgresServer(fsync=True).start()
    except (ImportError, RuntimeError, OSError) as exc:
        out["postgres_unavailable"] = str(exc)
        return out
    try:
        postgres = asyncio.run(_drive(server.create_database("bench"), seconds, WRITERS))
    finally:
        server.destroy()
    out.update({f"postgres_{k}": v for k, v in postgres.items()})
    return out


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0), indent=2))
