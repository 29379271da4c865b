"""The audit trail: every decision (issued, denied, error, pending) becomes one store record,
written before any token leaves the broker, and one JSON log line on stdout."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jitmesh.log import get_logger
from pdp.store.base import AuditRecord, Store

log = get_logger("pdp.audit")

# Every event an audit record can carry: the decisions, then what admins did.
AUDIT_EVENTS = ("issued", "denied", "error", "pending", "dry_run_allowed",
                "revoked", "lifted", "access_approved", "access_denied", "admin")


def check_event(event: str, name: str = "event") -> None:
    """ValueError naming the known events when `event` is none of them."""
    if event not in AUDIT_EVENTS:
        raise ValueError(f"{name} {event!r:.60} is not an audit event; known: {', '.join(AUDIT_EVENTS)}")


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


class Auditor:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def write(self, record: AuditRecord) -> AuditRecord:
        """Durably append, then log. Raises StoreError when the store cannot; the caller
        must then issue nothing."""
        stored = await self.store.append_audit(record)
        self.log(stored)
        return stored

    @staticmethod
    def log(record: AuditRecord, persisted: bool = True) -> None:
        d = record.details
        log.info("audit." + record.event, decision_id=record.decision_id, seq=record.seq, subject=record.subject,
                 audience=record.audience, jti=record.jti, pod_uid=record.pod_uid, policy_path=record.policy_path,
                 requested_scopes=d.get("requested_scopes"), granted_scopes=d.get("granted_scopes"),
                 ttl=d.get("ttl"), reasons=d.get("reasons"), error=d.get("error"),
                 error_description=d.get("error_description"), persisted=persisted)
