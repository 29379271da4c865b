"""Several broker replicas starting together on one empty database: the schema is
migrated exactly once and every replica opens."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pdp.store import StoreError
from pdp.store.postgres import MIGRATIONS, PostgresStore

pytestmark = pytest.mark.postgres


def test_replicas_starting_together_migrate_once_and_all_open(postgres_url: str) -> None:
    async def main() -> None:
        replicas = [PostgresStore(postgres_url, min_size=1) for _ in range(4)]
        await asyncio.gather(*(r.open() for r in replicas))
        try:
            await asyncio.gather(*(r.ping() for r in replicas))
        finally:
            await asyncio.gather(*(r.close() for r in replicas))
    asyncio.run(main())
    with psycopg.connect(postgres_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_reopening_a_migrated_database_changes_nothing(postgres_url: str) -> None:
    async def open_and_close() -> None:
        store = PostgresStore(postgres_url)
        await store.open()
        await store.close()
    asyncio.run(open_and_close())
    asyncio.run(open_and_close())
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)


def test_a_database_from_a_newer_jitmesh_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at timestamptz)")
        conn.execute("INSERT INTO schema_migrations VALUES (%s, now())", (len(MIGRATIONS) + 1,))

    async def main() -> None:
        with pytest.raises(StoreError, match="newer than"):
            await PostgresStore(postgres_url).open()
    asyncio.run(main())
