"""The audit trail: every decision (issued, denied, error, pending) becomes a store record,
written before any token leaves the broker, and a JSON log line on stdout.

Strangers must not fill it (docs/contract.md §2, "Admin and operations"): refusals
(`denied`, `error`) of requests without an attested subject are counted per client address
and error code and minute; the first COALESCE_AFTER of each keep records of their own (so
an occasional refusal can be found by its decision id), the rest coalesce into one record
(`details.coalesced`) whose `details.count` says how many there were and `details.last_time`
when the last was; the count is written back every few seconds. Every issued token, and
every decision about an attested subject, keeps a record of its own. The trail is kept for
`--audit-retention` and purged after (`purge_audit`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from jitmesh.log import get_logger
from pdp.attestation.kube import REFUSAL_DETAIL
from pdp.store.base import AuditRecord, Store, StoreError

log = get_logger("pdp.audit")

COALESCED_EVENTS = frozenset({"denied", "error"})
COALESCE_WINDOW = 60.0
COALESCE_MAX_KEYS = 10_000
COALESCE_MAX_CLOSING = 10_000  # finished windows whose count is not written yet (the store is down)
COALESCE_AFTER = 20  # refusals of a kind from one address that keep records of their own, per window
FLUSH_EVERY = 5.0
OVERFLOW_ADDRESS = "*"  # addresses beyond the table share one record a minute

CoalesceKey = tuple[str, str, str | None]


def decision_record(*, decision_id: str, time: float, event: str, policy_path: str,
                    subject: str | None = None, audience: str | None = None, jti: str | None = None,
                    pod_uid: str | None = None, requested_scopes: Sequence[str] = (),
                    granted_scopes: Sequence[str] | None = None, requested_ttl: int | None = None,
                    ttl: int | None = None, reasons: Sequence[str] = (), error: str | None = None,
                    error_description: str | None = None, policy_input: dict[str, Any] | None = None,
                    raw_decision: Any = None, client_ip: str | None = None,
                    extra: dict[str, Any] | None = None) -> AuditRecord:
    """One token-exchange decision as an audit record. `details` keeps what shadow replay
    needs to re-evaluate it: the policy input and the raw decision."""
    details: dict[str, Any] = {
        "requested_scopes": list(requested_scopes),
        "granted_scopes": None if granted_scopes is None else list(granted_scopes),
        "requested_ttl": requested_ttl,
        "ttl": ttl,
        "reasons": list(reasons),
        "client_ip": client_ip,
    }
    if error is not None:
        details["error"] = error
        details["error_description"] = error_description
    if policy_input is not None:
        details["input"] = policy_input
    if raw_decision is not None:
        details["decision"] = raw_decision
    if extra:
        details.update(extra)
    return AuditRecord(decision_id=decision_id, time=time, event=event, subject=subject, audience=audience,
                       policy_path=policy_path, jti=jti, pod_uid=pod_uid, details=details)


def record_json(record: AuditRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


@dataclasses.dataclass
class _Run:
    """Refusals of one key within one window: how many had a record of their own, and the
    record that counts the rest (None until there is a rest)."""

    window_end: float
    alone: int = 0
    record: AuditRecord | None = None
    count: int = 0
    written: int = 0  # the count the store has
    last_time: float = 0.0


def coalesce_key(record: AuditRecord) -> CoalesceKey | None:
    """What makes refusals the same for coalescing, or None for a record always kept alone.
    Only refusals of requests without an attested subject coalesce (what a stranger can
    send); the audience and the description are left out, a stranger could vary them at will."""
    if record.event not in COALESCED_EVENTS or record.jti is not None or record.subject is not None:
        return None
    d = record.details
    return (str(d.get("client_ip") or "-"), record.event, d.get("error"))


class Auditor:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time, window: float = COALESCE_WINDOW,
                 max_keys: int = COALESCE_MAX_KEYS, alone: int = COALESCE_AFTER) -> None:
        self.store = store
        self.clock = clock
        self.window = window
        self.max_keys = max_keys
        self.alone = alone
        self._runs: dict[CoalesceKey, _Run] = {}
        self._closing: list[_Run] = []

    async def write(self, record: AuditRecord) -> AuditRecord:
        """Durably append, then log. Raises StoreError when the store cannot; the caller
        must then issue nothing. Past the first few refusals of a kind from one address in
        a window, a refusal only counts in that window's coalesced record."""
        detail = REFUSAL_DETAIL.get()
        if detail and record.event in COALESCED_EVENTS and "tokenreview_error" not in record.details:
            record = dataclasses.replace(record, details={**record.details, "tokenreview_error": detail})
        key = coalesce_key(record)
        if key is None:
            return await self._append(record)
        if key not in self._runs and len(self._runs) >= self.max_keys:
            self._forget_finished(record.time)
            if len(self._runs) >= self.max_keys:
                record = dataclasses.replace(record, details={**record.details, "client_ip": OVERFLOW_ADDRESS})
                key = (OVERFLOW_ADDRESS, *key[1:])
        run = self._runs.get(key)
        if run is None or record.time >= run.window_end:
            if run is not None:
                self._close(run)
            run = self._runs[key] = _Run(window_end=record.time + self.window)
        if run.alone < self.alone:
            run.alone += 1
            return await self._append(record)
        if run.count > 0:
            run.count += 1
            run.last_time = max(run.last_time, record.time)
            return dataclasses.replace(record, seq=run.record.seq if run.record else None)
        first = dataclasses.replace(record, details={**record.details, "count": 1, "coalesced": True})
        run.count = run.written = 1
        run.last_time = record.time
        try:
            run.record = await self._append(first)
        except StoreError:
            run.count = run.written = 0  # the next refusal tries again
            raise
        return run.record

    async def write_with_dpop_proof(self, record: AuditRecord, jti: str, expires_at: float,
                                    now: float) -> AuditRecord | None:
        """Spend a DPoP proof's jti and append `record` (an issuance) together; None, and no
        record, when the proof was used before. Raises StoreError like `write`."""
        stored = await self.store.append_audit_with_dpop_proof(record, jti, expires_at, now)
        if stored is not None:
            self.log(stored)
        return stored

    async def _append(self, record: AuditRecord) -> AuditRecord:
        stored = await self.store.append_audit(record)
        self.log(stored)
        return stored

    def _close(self, run: _Run) -> None:
        if run.count != run.written:
            if len(self._closing) >= COALESCE_MAX_CLOSING:
                lost = self._closing.pop(0)
                log.error("audit.count_lost", decision_id=lost.record.decision_id if lost.record else None,
                          count=lost.count)
            self._closing.append(run)

    def _forget_finished(self, now: float) -> None:
        for key, run in list(self._runs.items()):
            if run.window_end <= now:
                del self._runs[key]
                self._close(run)

    async def flush(self) -> None:
        """Write the counts of coalesced refusals back to their records."""
        self._forget_finished(self.clock())
        runs = [*self._closing, *self._runs.values()]
        self._closing = []
        for run in runs:
            if run.count == run.written or run.record is None or run.record.seq is None:
                continue
            count = run.count
            details = {**run.record.details, "count": count, "last_time": run.last_time}
            try:
                await self.store.set_audit_details(run.record.seq, details)
            except StoreError as exc:
                log.warning("audit.count_not_written", decision_id=run.record.decision_id, count=count,
                            error=str(exc))
                if run.window_end <= self.clock():
                    self._close(run)
                continue
            run.written = count
            run.record = dataclasses.replace(run.record, details=details)
            log.info("audit.coalesced", decision_id=run.record.decision_id, seq=run.record.seq,
                     refusal=run.record.event, client_ip=details.get("client_ip"), count=count,
                     error=details.get("error"))

    async def run(self, every: float = FLUSH_EVERY) -> None:
        """Flush the counts every `every` seconds until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(every)
                await self.flush()
        finally:
            try:
                await self.flush()
            except StoreError as exc:
                log.warning("audit.count_not_written", error=str(exc))

    @staticmethod
    def log(record: AuditRecord, persisted: bool = True) -> None:
        d = record.details
        log.info("audit." + record.event, decision_id=record.decision_id, seq=record.seq, subject=record.subject,
                 audience=record.audience, jti=record.jti, pod_uid=record.pod_uid, policy_path=record.policy_path,
                 requested_scopes=d.get("requested_scopes"), granted_scopes=d.get("granted_scopes"),
                 ttl=d.get("ttl"), reasons=d.get("reasons"), error=d.get("error"),
                 error_description=d.get("error_description"), persisted=persisted)


async def purge_audit(store: Store, now: float, retention: float) -> int:
    """Delete the audit records older than `retention` seconds; how many went."""
    purged = await store.purge_audit(now - retention)
    if purged:
        log.info("audit.purged", records=purged, before=now - retention)
    return purged
