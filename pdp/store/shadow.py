"""Shadow comparisons in the store: the tables and SQL both stores run, kept here so the
store drivers only wrap them in their own transactions.

Space is bounded: `shadow_counts` holds one row per (minute, class, verdict pair,
subject, audience), `shadow_samples` at most `samples_per_class` rows per (minute,
class) (`slot` is part of the key, so a replica racing another cannot add more), and
rows older than the retention are pruned.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

RETENTION_SECONDS: Final = 30 * 86400
BUCKET_SECONDS: Final = 60  # the grain of stored counts


def bucket_of(time: float) -> int:
    """The start (unix seconds) of the minute `time` falls in: the grain of stored counts."""
    return int(time // BUCKET_SECONDS) * BUCKET_SECONDS


@dataclass(frozen=True)
class ShadowCount:
    """How many comparisons of one class, verdict pair, subject and audience fell in one
    minute. Rows are keyed by everything but `count`, so space grows with the number of
    distinct workloads and minutes, not with traffic."""

    bucket: int
    shadow_class: str  # a ShadowClass, or NOT_COMPARED
    enforced: str
    candidate: str
    subject: str
    audience: str
    count: int


@dataclass(frozen=True)
class ShadowSample:
    """One example comparison, kept for at most `samples_per_class` per class and minute."""

    bucket: int
    shadow_class: str
    decision_id: str
    time: float
    subject: str
    audience: str
    enforced_decision: Any
    candidate_decision: Any
    candidate_error: str | None = None


_COUNTS_TABLE = """CREATE TABLE shadow_counts (
    bucket BIGINT NOT NULL,
    class TEXT NOT NULL,
    enforced TEXT NOT NULL,
    candidate TEXT NOT NULL,
    subject TEXT NOT NULL,
    audience TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (bucket, class, enforced, candidate, subject, audience))"""
_SAMPLES_TABLE = """CREATE TABLE shadow_samples (
    bucket BIGINT NOT NULL,
    class TEXT NOT NULL,
    slot INTEGER NOT NULL,
    decision_id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    subject TEXT NOT NULL,
    audience TEXT NOT NULL,
    enforced_decision TEXT,
    candidate_decision TEXT,
    candidate_error TEXT,
    PRIMARY KEY (bucket, class, slot))"""

# One schema migration, the same text for SQLite and PostgreSQL.
MIGRATION: Final[tuple[str, ...]] = (_COUNTS_TABLE, _SAMPLES_TABLE)

_SELECT_COUNTS = ("SELECT MIN(bucket), class, enforced, candidate, subject, audience, SUM(count) "
                  "FROM shadow_counts WHERE bucket >= {p} AND bucket < {p} "
                  "GROUP BY class, enforced, candidate, subject, audience")
_SELECT_SAMPLES = ("SELECT bucket, class, decision_id, time, subject, audience, enforced_decision, "
                   "candidate_decision, candidate_error FROM ("
                   "SELECT *, ROW_NUMBER() OVER (PARTITION BY class ORDER BY time DESC, decision_id) AS rn "
                   "FROM shadow_samples WHERE bucket >= {p} AND bucket < {p}) AS ranked "
                   "WHERE rn <= {p} ORDER BY class, time DESC")
_UPSERT_COUNT = ("INSERT INTO shadow_counts (bucket, class, enforced, candidate, subject, audience, count) "
                 "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) "
                 "ON CONFLICT (bucket, class, enforced, candidate, subject, audience) "
                 "DO UPDATE SET count = shadow_counts.count + excluded.count")
_INSERT_SAMPLE = ("INSERT INTO shadow_samples (bucket, class, slot, decision_id, time, subject, audience, "
                  "enforced_decision, candidate_decision, candidate_error) "
                  "SELECT {p}, {p}, COUNT(*), {p}, {p}, {p}, {p}, {p}, {p}, {p} "
                  "FROM shadow_samples WHERE bucket = {p} AND class = {p} HAVING COUNT(*) < {p} "
                  "ON CONFLICT (bucket, class, slot) DO NOTHING")
_PRUNE = ("DELETE FROM shadow_counts WHERE bucket < {p}", "DELETE FROM shadow_samples WHERE bucket < {p}")


def sql(template: str, placeholder: str) -> str:
    """A statement with the driver's placeholder (`?` for sqlite3, `%s` for psycopg)."""
    return template.format(p=placeholder)


def _window(since: float | None, until: float | None) -> tuple[int, int]:
    low = bucket_of(since) if since is not None else -(2**62)
    high = bucket_of(until) + 60 if until is not None else 2**62  # the minute of `until` is included
    return low, high


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)


def _unjson(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def count_rows(counts: Sequence[ShadowCount]) -> list[tuple[Any, ...]]:
    return [(c.bucket, c.shadow_class, c.enforced, c.candidate, c.subject, c.audience, c.count) for c in counts]


def sample_rows(samples: Sequence[ShadowSample], samples_per_class: int) -> list[tuple[Any, ...]]:
    return [(s.bucket, s.shadow_class, s.decision_id, s.time, s.subject, s.audience, _json(s.enforced_decision),
             _json(s.candidate_decision), s.candidate_error, s.bucket, s.shadow_class, samples_per_class)
            for s in samples]


def count_of(row: Sequence[Any]) -> ShadowCount:
    return ShadowCount(bucket=int(row[0]), shadow_class=row[1], enforced=row[2], candidate=row[3], subject=row[4],
                       audience=row[5], count=int(row[6]))


def sample_of(row: Sequence[Any]) -> ShadowSample:
    return ShadowSample(bucket=int(row[0]), shadow_class=row[1], decision_id=row[2], time=float(row[3]),
                        subject=row[4], audience=row[5], enforced_decision=_unjson(row[6]),
                        candidate_decision=_unjson(row[7]), candidate_error=row[8])


def counts_params(since: float | None, until: float | None) -> tuple[Any, ...]:
    return _window(since, until)


def samples_params(since: float | None, until: float | None, per_class: int) -> tuple[Any, ...]:
    return (*_window(since, until), per_class)


# --- SQLite: run inside the store's writer transaction or on a reader connection ----------

def sqlite_record(conn: sqlite3.Connection, counts: Sequence[ShadowCount], samples: Sequence[ShadowSample],
                  samples_per_class: int) -> None:
    conn.executemany(sql(_UPSERT_COUNT, "?"), count_rows(counts))
    conn.executemany(sql(_INSERT_SAMPLE, "?"), sample_rows(samples, samples_per_class))


def sqlite_counts(conn: sqlite3.Connection, since: float | None, until: float | None) -> list[ShadowCount]:
    return [count_of(r) for r in conn.execute(sql(_SELECT_COUNTS, "?"), counts_params(since, until)).fetchall()]


def sqlite_samples(conn: sqlite3.Connection, since: float | None, until: float | None,
                   per_class: int) -> list[ShadowSample]:
    rows = conn.execute(sql(_SELECT_SAMPLES, "?"), samples_params(since, until, per_class)).fetchall()
    return [sample_of(r) for r in rows]


def sqlite_prune(conn: sqlite3.Connection, before: float) -> None:
    for statement in _PRUNE:
        conn.execute(sql(statement, "?"), (bucket_of(before),))
