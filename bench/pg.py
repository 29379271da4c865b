"""A real PostgreSQL for the benchmarks, started with the tests' server code
(tests/fixtures/postgres.py) rather than a copy of it."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path


def unavailable_reason() -> str | None:
    """Why the broker cannot be benchmarked on PostgreSQL here, or None."""
    if importlib.util.find_spec("pdp.store.postgres") is None:
        return "the broker has no PostgreSQL store yet (pdp/store/postgres.py)"
    try:
        from tests.fixtures.postgres import find_bindir
    except ImportError as exc:
        return f"tests/fixtures/postgres.py cannot be imported: {exc}"
    try:
        find_bindir()
    except RuntimeError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[str]:
    """A fresh PostgreSQL server with durable commits (fsync on, as in production);
    yields the URL of an empty database on it, destroyed afterwards."""
    from tests.fixtures.postgres import PostgresServer

    pg = PostgresServer(fsync=True).start()
    try:
        yield pg.create_database("bench")
    finally:
        (workdir / "postgres.log").write_text(pg.output())
        pg.destroy()
