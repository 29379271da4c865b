"""SQLite specifics: the schema version, another process sharing the file, and writes that
were acknowledged surviving the writer being killed."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pdp.store import Revocation, StoreError, open_store_from_url
from pdp.store.sqlite import MIGRATIONS

REPO = Path(__file__).resolve().parents[2]


def test_opening_a_new_file_applies_every_migration(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store_from_url(f"sqlite:///{tmp_path}/nested/dir/store.db")
        await store.open()
        await store.close()
    asyncio.run(main())
    with sqlite3.connect(tmp_path / "nested/dir/store.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_from_a_newer_jitmesh_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "store.db") as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")

    async def main() -> None:
        with pytest.raises(StoreError, match="newer than"):
            await open_store_from_url(f"sqlite:///{tmp_path}/store.db").open()
    asyncio.run(main())


def test_a_waiter_wakes_on_a_revocation_written_by_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    writer = textwrap.dedent(f"""
        import asyncio, time
        from pdp.store import Revocation, open_store_from_url
        async def main():
            store = open_store_from_url({url!r})
            await store.open()
            await store.add_revocation(Revocation(id="from-process", kind="jti", value="j1", reason="test",
                                                  created_at=time.time(), created_by="other-process"))
            print(time.time(), flush=True)
            await store.close()
        asyncio.run(main())
    """)

    async def main() -> tuple[list[str], float]:
        store = open_store_from_url(url)
        await store.open()
        try:
            waiter = asyncio.create_task(store.wait_revocation_events(0, timeout=20))
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, cwd=REPO,
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            events = await waiter
            return [e.revocation.id for e in events], time.time() - float(out.decode().split()[-1])
        finally:
            await store.close()
    ids, latency = asyncio.run(main())
    assert ids == ["from-process"]
    assert latency < 0.6


def test_audit_records_acknowledged_before_the_broker_is_killed_are_all_there(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    writer = textwrap.dedent(f"""
        import asyncio, sys, time
        from pdp.store import AuditRecord, open_store_from_url
        async def main():
            store = open_store_from_url({url!r})
            await store.open()
            async def one(w):
                n = 0
                while True:
                    r = await store.append_audit(AuditRecord(decision_id=f"w{{w}}-{{n}}", time=time.time(),
                                                             event="issued"))
                    sys.stdout.write(r.decision_id + "\\n")
                    sys.stdout.flush()
                    n += 1
            await asyncio.gather(*(one(w) for w in range(16)))
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 20
    while len(acknowledged) < 500 and time.monotonic() < deadline:
        acknowledged.append(proc.stdout.readline().decode().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(acknowledged) >= 500
    with sqlite3.connect(tmp_path / "store.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM audit")}
    assert set(acknowledged) <= stored


def test_two_stores_on_one_file_keep_one_increasing_audit_sequence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"

    async def main() -> list[int]:
        from pdp.store import AuditRecord
        a, b = open_store_from_url(url), open_store_from_url(url)
        await a.open()
        await b.open()
        try:
            written = await asyncio.gather(*(s.append_audit(AuditRecord(decision_id=f"d{i}", time=1.0,
                                                                        event="issued"))
                                             for i in range(100) for s in (a, b)))
            assert len({r.seq for r in written}) == 200
            return [r.seq or 0 for r in await a.query_audit(limit=1000)]
        finally:
            await a.close()
            await b.close()
    seqs = asyncio.run(main())
    assert seqs == sorted(seqs) and len(seqs) == 200


def test_revocation_written_then_read_back_after_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    rev = Revocation(id="r1", kind="audience", value="billing", reason="incident", created_at=1.0,
                     created_by="admin")

    async def write() -> None:
        store = open_store_from_url(url)
        await store.open()
        await store.add_revocation(rev)
        await store.close()

    async def read() -> object:
        store = open_store_from_url(url)
        await store.open()
        try:
            return await store.active_revocations()
        finally:
            await store.close()
    asyncio.run(write())
    assert asyncio.run(read()) == [rev]
