"""The auditor's coalescing of refusals from strangers (with an in-memory store fake)."""

from __future__ import annotations

import asyncio

from pdp.audit import COALESCE_AFTER, Auditor, decision_record
from pdp.store.base import AuditRecord
from tests.fixtures.broker import MemoryStore


def refusal(n: int, t: float, ip: str = "10.0.0.9", subject: str | None = None) -> AuditRecord:
    return decision_record(decision_id=f"d{n}", time=t, event="denied", policy_path="p", subject=subject,
                           error="invalid_grant", error_description="not a JWT", client_ip=ip)


def test_refusals_past_the_first_few_of_a_minute_only_count_in_one_record() -> None:
    store = MemoryStore()
    auditor = Auditor(store, clock=lambda: 30.0)

    async def flood() -> None:
        for n in range(200):
            await auditor.write(refusal(n, 0.0 + n / 100))
        await auditor.flush()

    asyncio.run(flood())
    assert len(store.audit) == COALESCE_AFTER + 1
    counting = [r for r in store.audit if r.details.get("coalesced")]
    assert len(counting) == 1 and counting[0].details["count"] == 200 - COALESCE_AFTER


def test_a_new_minute_starts_a_new_count_and_the_old_one_is_written() -> None:
    store = MemoryStore()
    now = [0.0]
    auditor = Auditor(store, clock=lambda: now[0], alone=0)

    async def two_minutes() -> None:
        for n in range(5):
            await auditor.write(refusal(n, 1.0))
        for n in range(3):
            await auditor.write(refusal(10 + n, 61.5))
        now[0] = 200.0
        await auditor.flush()

    asyncio.run(two_minutes())
    assert sorted(r.details["count"] for r in store.audit) == [3, 5]


def test_refusals_of_attested_subjects_and_issuances_are_never_coalesced() -> None:
    store = MemoryStore()
    auditor = Auditor(store, alone=0)

    async def many() -> None:
        for n in range(10):
            await auditor.write(refusal(n, 1.0, subject="system:serviceaccount:a:b"))
            await auditor.write(decision_record(decision_id=f"i{n}", time=1.0, event="issued", policy_path="p",
                                                jti=f"j{n}", client_ip="10.0.0.9"))

    asyncio.run(many())
    assert len(store.audit) == 20


def test_the_table_of_addresses_is_bounded_and_the_rest_share_one_record() -> None:
    store = MemoryStore()
    auditor = Auditor(store, max_keys=3, alone=0)

    async def many_addresses() -> None:
        for n in range(50):
            await auditor.write(refusal(n, 1.0, ip=f"10.0.1.{n}"))
        await auditor.flush()

    asyncio.run(many_addresses())
    assert len(store.audit) == 4
    shared = next(r for r in store.audit if r.details["client_ip"] == "*")
    assert shared.details["count"] == 47
