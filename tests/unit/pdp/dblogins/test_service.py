"""A started broker's logins against fakes: which the sweep ends, and which a revocation ends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pdp.dblogins.postgres import PREFIX, ExistingLogin, LoginOwner
from pdp.dblogins.service import DatabaseLogins
from pdp.dblogins.sweep import UNRECORDED_GRACE
from pdp.dblogins.targets import Targets
from pdp.revocation.index import RevocationIndex
from pdp.store.base import AuditRecord, Revocation
from tests.fixtures.broker import MemoryStore

NOW = 2_000_000_000.0


@dataclass
class FakeTarget:
    admin_pool: int = 2
    unrecorded_grace: float = UNRECORDED_GRACE


@dataclass
class FakeLogins:
    found: list[ExistingLogin]
    ended: list[str] = field(default_factory=list)
    target: FakeTarget = field(default_factory=FakeTarget)

    async def list(self) -> list[ExistingLogin]:
        return [f for f in self.found if f.username not in self.ended]

    async def end(self, username: str) -> bool:
        self.ended.append(username)
        return True


def login(n: int, issued_ago: float, ttl: float = 3600, subject: str = "system:serviceaccount:orders:api",
          pod: str | None = None) -> ExistingLogin:
    owner = LoginOwner(jti=f"{n:032x}", subject=subject, pod_uid=pod, audience="orders-db", scopes=("read",),
                       decision_id=f"d{n}", issued_at=NOW - issued_ago, expires_at=NOW - issued_ago + ttl)
    return ExistingLogin(PREFIX + owner.jti, owner.expires_at, owner)


def service(store: MemoryStore, fake: FakeLogins) -> DatabaseLogins:
    logins = DatabaseLogins(Targets(), store, RevocationIndex(store, clock=lambda: NOW), clock=lambda: NOW,
                            ends_per_second=1000)
    logins.targets = {"orders-db": fake}  # type: ignore[dict-item]
    return logins


def issued(store: MemoryStore, n: int, event: str = "issued") -> None:
    store.audit.append(AuditRecord(decision_id=f"d{n}", time=NOW, event=event, jti=f"{n:032x}"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_sweep_ends_an_old_unrecorded_login_and_keeps_recorded_and_young_ones() -> None:
    store = MemoryStore()
    old = UNRECORDED_GRACE + 60
    fake = FakeLogins([login(1, old), login(2, old), login(3, 5), login(4, old)])
    issued(store, 1)
    issued(store, 4, event="dry_run_allowed")
    assert run(service(store, fake).sweep()) == 1
    assert fake.ended == [PREFIX + f"{2:032x}"]


def test_a_record_of_another_login_under_the_same_decision_does_not_count() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, UNRECORDED_GRACE + 60)])
    store.audit.append(AuditRecord(decision_id="d1", time=NOW, event="issued", jti="f" * 32))
    assert run(service(store, fake).sweep()) == 1


def test_the_sweep_ends_expired_logins() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 400, ttl=300), login(2, 10, ttl=300)])
    issued(store, 1)
    issued(store, 2)
    assert run(service(store, fake).sweep()) == 1
    assert fake.ended == [PREFIX + f"{1:032x}"]


def test_a_subject_revocation_ends_only_that_subjects_logins() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 10), login(2, 10, subject="system:serviceaccount:other:api"), login(3, 10)])
    revocation = Revocation(id="r", kind="subject", value="system:serviceaccount:orders:api", reason="t",
                            created_at=NOW, created_by="admin")
    assert run(service(store, fake).revoked(revocation)) == 2
    assert sorted(fake.ended) == [PREFIX + f"{1:032x}", PREFIX + f"{3:032x}"]


def test_a_pod_revocation_ends_only_that_pods_logins() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 10, pod="p1"), login(2, 10, pod="p2")])
    revocation = Revocation(id="r", kind="pod_uid", value="p2", reason="t", created_at=NOW, created_by="admin")
    assert run(service(store, fake).revoked(revocation)) == 1
    assert fake.ended == [PREFIX + f"{2:032x}"]


def test_a_revocation_of_another_audience_ends_nothing() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 10)])
    revocation = Revocation(id="r", kind="audience", value="ledger", reason="t", created_at=NOW, created_by="a")
    assert run(service(store, fake).revoked(revocation)) == 0


def test_a_jti_revocation_ends_the_login_named_by_it() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 10), login(2, 10)])
    revocation = Revocation(id="r", kind="jti", value=f"{2:032x}", reason="t", created_at=NOW, created_by="a")
    assert run(service(store, fake).revoked(revocation)) == 1
    assert fake.ended == [PREFIX + f"{2:032x}"]


def test_a_jwt_jti_revocation_ends_no_login() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(1, 10)])
    revocation = Revocation(id="r", kind="jti", value="5d1e0000-0000-4000-8000-000000000001", reason="t",
                            created_at=NOW, created_by="a")
    assert run(service(store, fake).revoked(revocation)) == 0 and fake.ended == []


def test_the_sweep_ends_logins_no_faster_than_its_rate() -> None:
    store = MemoryStore()
    fake = FakeLogins([login(n, issued_ago=7200, ttl=60) for n in range(6)])
    logins = service(store, fake)
    logins.rate.per_second = 20.0

    async def timed() -> float:
        started = asyncio.get_running_loop().time()
        assert await logins.sweep() == 6
        return asyncio.get_running_loop().time() - started
    assert run(timed()) >= 5 / 20.0 - 0.01


def test_a_role_that_appears_unrecorded_while_the_broker_runs_is_ended_by_a_later_sweep() -> None:
    store = MemoryStore()
    fake = FakeLogins([], target=FakeTarget(unrecorded_grace=0.0))
    logins = service(store, fake)
    logins.sweep_every = 0.05

    async def go() -> list[str]:
        sweeps = asyncio.create_task(logins.run_sweeps())
        await asyncio.sleep(0.2)  # the sweep at start has run and found nothing
        fake.found.append(login(1, issued_ago=UNRECORDED_GRACE + 60))
        for _ in range(60):
            await asyncio.sleep(0.05)
            if fake.ended:
                break
        sweeps.cancel()
        return fake.ended
    assert run(go()) == [PREFIX + f"{1:032x}"]
