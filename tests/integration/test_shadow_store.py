"""Shadow comparisons in the real stores: counts are summed, samples bounded, windows honoured."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pdp.shadow.classify import Comparison, ShadowTally, compare
from pdp.store import Store, open_store_from_url
from pdp.store.shadow import ShadowCount, ShadowSample

T = TypeVar("T")
T0 = 1_795_000_020.0  # 20 s into a minute


@pytest.fixture(params=["sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/shadow.db"


def run(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = open_store_from_url(url)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def comparison(i: int, t: float, enforced: Any, candidate: Any, sub: str = "sa", aud: str = "db") -> Comparison:
    return compare(decision_id=f"d{i}", time=t,
                   policy_input={"subject": {"sub": sub}, "request": {"audience": aud, "scopes": ["read"]}},
                   enforced_decision=enforced, candidate_decision=candidate)


ALLOW = {"allow": True, "scopes": ["read"], "ttl_seconds": 60}
DENY = {"allow": False}


def test_counts_of_several_flushes_are_summed(store_url: str) -> None:
    async def body(store: Store) -> list[ShadowCount]:
        for batch in range(3):
            tally = ShadowTally()
            for i in range(4):
                tally.add(comparison(batch * 10 + i, T0 + i, DENY, ALLOW))
            counts, samples = tally.drain()
            await store.record_shadow(counts, samples, 5)
        return await store.shadow_counts(None, None)

    rows = run(store_url, body)
    assert [(r.shadow_class, r.enforced, r.candidate, r.subject, r.audience, r.count) for r in rows] == [
        ("deny_to_allow", "deny", "allow", "sa", "db", 12)]


def test_samples_are_bounded_per_class_and_minute_across_flushes(store_url: str) -> None:
    async def body(store: Store) -> tuple[list[ShadowSample], list[ShadowSample]]:
        for batch in range(3):
            tally = ShadowTally(samples_per_class=2)
            for i in range(4):
                tally.add(comparison(batch * 10 + i, T0 + batch, DENY, ALLOW))
                tally.add(comparison(100 + batch * 10 + i, T0 + batch, ALLOW, ALLOW))
            counts, samples = tally.drain()
            await store.record_shadow(counts, samples, 3)
        return await store.shadow_samples(None, None, 100), await store.shadow_samples(None, None, 1)

    everything, newest = run(store_url, body)
    by_class: dict[str, list[str]] = {}
    for s in everything:
        by_class.setdefault(s.shadow_class, []).append(s.decision_id)
    assert {k: len(v) for k, v in by_class.items()} == {"deny_to_allow": 3, "agree": 3}
    # the first flush kept two (its tally's bound), the second one more, the third none; newest first
    assert by_class["deny_to_allow"] == ["d10", "d0", "d1"]
    assert sorted((s.shadow_class, s.decision_id) for s in newest) == [("agree", "d110"), ("deny_to_allow", "d10")]


def test_samples_keep_both_decisions_and_the_candidate_error(store_url: str) -> None:
    async def body(store: Store) -> list[ShadowSample]:
        tally = ShadowTally()
        tally.add(comparison(1, T0, ALLOW, None))
        await store.record_shadow(*tally.drain(), 5)
        return await store.shadow_samples(None, None, 5)

    [s] = run(store_url, body)
    assert (s.shadow_class, s.decision_id, s.subject, s.audience) == ("candidate_error", "d1", "sa", "db")
    assert s.enforced_decision == ALLOW and s.candidate_decision is None
    assert s.candidate_error == "decision is undefined"


def test_window_selects_whole_minutes(store_url: str) -> None:
    async def body(store: Store) -> tuple[int, int, int, int]:
        tally = ShadowTally()
        for minute in range(5):
            tally.add(comparison(minute, T0 + 60 * minute, ALLOW, ALLOW))
        await store.record_shadow(*tally.drain(), 5)

        async def total(since: float | None, until: float | None) -> int:
            return sum(r.count for r in await store.shadow_counts(since, until))
        return (await total(None, None), await total(T0 + 60, None), await total(T0 + 60, T0 + 120),
                len(await store.shadow_samples(T0 + 180, None, 5)))

    assert run(store_url, body) == (5, 4, 2, 2)


def test_prune_drops_minutes_before_the_cutoff(store_url: str) -> None:
    async def body(store: Store) -> tuple[int, int]:
        tally = ShadowTally()
        for minute in range(3):
            tally.add(comparison(minute, T0 + 60 * minute, ALLOW, DENY))
        await store.record_shadow(*tally.drain(), 5)
        await store.prune_shadow(T0 + 120)
        return (sum(r.count for r in await store.shadow_counts(None, None)),
                len(await store.shadow_samples(None, None, 5)))

    assert run(store_url, body) == (1, 1)


def test_shadow_tables_survive_reopening(store_url: str) -> None:
    async def write(store: Store) -> None:
        tally = ShadowTally()
        tally.add(comparison(1, T0, ALLOW, DENY))
        await store.record_shadow(*tally.drain(), 5)

    async def read(store: Store) -> int:
        return sum(r.count for r in await store.shadow_counts(None, None))

    run(store_url, write)
    assert run(store_url, read) == 1
