"""The broker's durable state behind one interface: signing keys, the audit trail,
revocations and their event log. SQLite (`sqlite:///path`) and PostgreSQL
(`postgresql://...`) implement it; the same contract tests run against both.

Every method is async. A method that returns has made its write durable: the broker
issues nothing until `append_audit` has returned. A store that cannot do what was asked
raises `StoreError` (never a driver exception), and the broker fails closed on it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pdp.store.shadow import ShadowCount, ShadowSample

RevocationKind = Literal["jti", "subject", "pod_uid", "audience"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("jti", "subject", "pod_uid", "audience")


class StoreError(Exception):
    """The store could not be reached or could not do what was asked."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes          # PKCS#8 PEM of an EC P-256 key
    created_at: float           # unix seconds
    retired_at: float | None = None      # stops signing at this time (None: may sign)
    publish_until: float | None = None   # dropped from JWKS after this (None: while signing)


@dataclass(frozen=True)
class AuditRecord:
    """One decision or admin action. The indexed columns are the ones queries filter on;
    everything else (requested and granted scopes, TTL, reasons, the policy input and the
    raw decision, the admin who acted, the error) travels in `details`."""

    decision_id: str
    time: float                 # unix seconds
    event: str                  # issued | denied | error | pending | revoked | admin | ...
    subject: str | None = None
    audience: str | None = None
    policy_path: str | None = None
    jti: str | None = None
    pod_uid: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None      # assigned by the store, increasing


@dataclass(frozen=True)
class Revocation:
    id: str
    kind: RevocationKind
    value: str
    reason: str
    created_at: float
    created_by: str
    # jti revocations can be purged once the token would have expired anyway
    expires_at: float | None = None
    lifted_at: float | None = None
    lifted_by: str | None = None
    # the revoked token's audience (jti revocations, when known), so a verifier can apply it alone
    audience: str | None = None

    @property
    def active(self) -> bool:
        return self.lifted_at is None


AccessRequestStatus = Literal["pending", "approved", "denied"]


@dataclass(frozen=True)
class AccessRequest:
    """A request that the policy sent to a human (`approval_required`). Pending until an
    admin approves or denies it; `expires_at` is when a pending request lapses, and when an
    approved one stops covering new tokens."""

    id: str
    subject: str
    audience: str
    scopes: tuple[str, ...]  # sorted
    created_at: float
    expires_at: float
    pod_uid: str | None = None
    status: AccessRequestStatus = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RevocationEvent:
    """An entry of the revocation event log; `seq` is the SSE event id, increasing,
    so a subscriber that reconnects with Last-Event-ID misses nothing."""

    seq: int
    action: Literal["revoked", "lifted"]
    revocation: Revocation
    time: float


class Store(abc.ABC):
    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply schema migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers a trivial read."""

    # signing keys
    @abc.abstractmethod
    async def list_keys(self) -> list[SigningKey]: ...

    @abc.abstractmethod
    async def add_key(self, key: SigningKey) -> None: ...

    @abc.abstractmethod
    async def retire_key(self, kid: str, retired_at: float, publish_until: float) -> None: ...

    @abc.abstractmethod
    async def rotate_key(self, new: SigningKey, rotate_if_older_than: float, publish_until: float) -> SigningKey:
        """Atomically: if the newest unretired key was created at or after
        `rotate_if_older_than`, another replica already rotated; return that key and store
        nothing. Otherwise retire every unretired key (retired_at = new.created_at, published
        until `publish_until`), insert `new`, and return it. Replicas sharing a store thus
        agree on one signing key and one JWKS."""

    @abc.abstractmethod
    async def delete_key(self, kid: str) -> None: ...

    # audit
    @abc.abstractmethod
    async def append_audit(self, record: AuditRecord) -> AuditRecord:
        """Durably append; returns the record with `seq` set."""

    @abc.abstractmethod
    async def query_audit(self, *, since: float | None = None, until: float | None = None,
                          subject: str | None = None, event: str | None = None,
                          audience: str | None = None, decision_id: str | None = None,
                          after_seq: int | None = None, limit: int = 100, jti: str | None = None) -> list[AuditRecord]:
        """Matching records, oldest first (by seq): `since <= time < until`, `seq > after_seq`,
        at most `limit` (clamped to 0..10000)."""

    # revocations
    @abc.abstractmethod
    async def set_audit_details(self, seq: int, details: dict[str, Any]) -> None:
        """Replace the `details` of record `seq` (the count of coalesced refusals)."""

    @abc.abstractmethod
    async def purge_audit(self, before: float) -> int:
        """Delete the audit records whose `time` is before `before` (in batches, so token
        requests are not held behind one long delete); how many went."""

    @abc.abstractmethod
    async def add_revocation(self, revocation: Revocation) -> RevocationEvent:
        """Store the revocation and append its `revoked` event, atomically."""

    @abc.abstractmethod
    async def lift_revocation(self, revocation_id: str, lifted_by: str,
                              when: float) -> RevocationEvent | None:
        """Mark lifted and append a `lifted` event; None if no such active revocation."""

    @abc.abstractmethod
    async def get_revocation(self, revocation_id: str) -> Revocation | None: ...

    @abc.abstractmethod
    async def active_revocations(self) -> list[Revocation]: ...

    @abc.abstractmethod
    async def revocations_in_force(self, lifted_if_created_after: float) -> list[Revocation]:
        """The active revocations, and the lifted ones created after `lifted_if_created_after`:
        a token issued before a revocation stays revoked after a lift (docs/contract.md §2),
        so a lifted revocation counts until every token it covers has expired."""

    @abc.abstractmethod
    async def store_epoch(self) -> str:
        """A random id made when the store was created. A store made anew (a new SQLite file,
        a new database) has another one, so an event id from the old one is recognised as
        such and its holder resynchronised, not left waiting for a seq that means nothing."""

    @abc.abstractmethod
    async def revocation_events(self, after_seq: int = 0, limit: int = 1000) -> list[RevocationEvent]:
        """Events with seq > after_seq, oldest first."""

    @abc.abstractmethod
    async def last_revocation_seq(self) -> int:
        """The seq of the newest event in the log, 0 when it is empty."""

    @abc.abstractmethod
    async def purge_revocations(self, expired_before: float, lifted_before: float) -> int:
        """Delete the revocations that can no longer matter, with their events: those whose
        `expires_at` (the revoked token's own expiry) is before `expired_before`, and those
        lifted before `lifted_before`. Returns how many revocations went. Active revocations
        without an expiry (subject, pod, audience) are never purged."""

    @abc.abstractmethod
    async def wait_revocation_events(self, after_seq: int, timeout: float) -> list[RevocationEvent]:
        """Like `revocation_events`, but when there are none yet, wait up to `timeout`
        seconds for one, including one written by another process or replica sharing
        the store (PostgreSQL: LISTEN/NOTIFY; SQLite: in-process wake-up plus polling)."""

    # access requests (human approvals, pdp/approvals.py)
    @abc.abstractmethod
    async def add_access_request(self, request: AccessRequest) -> None: ...

    @abc.abstractmethod
    async def get_access_request(self, request_id: str) -> AccessRequest | None: ...

    @abc.abstractmethod
    async def find_access_request(self, subject: str, audience: str, scopes: tuple[str, ...],
                                  now: float) -> AccessRequest | None:
        """The newest request of this subject for exactly this audience and scopes that has
        not lapsed at `now`, whatever its status."""

    @abc.abstractmethod
    async def decide_access_request(self, request_id: str, status: AccessRequestStatus, decided_by: str,
                                    decided_at: float, reason: str | None,
                                    expires_at: float) -> AccessRequest | None:
        """Approve or deny a pending request that has not lapsed at `decided_at`; None when
        there is no such request (unknown, decided already, or lapsed)."""

    @abc.abstractmethod
    async def purge_access_requests(self, before: float) -> int:
        """Delete the access requests that lapsed (or whose approval or refusal ran out)
        before `before`; how many went. The audit trail keeps every decision."""

    @abc.abstractmethod
    async def list_access_requests(self, status: AccessRequestStatus | None, now: float,
                                   limit: int = 100) -> list[AccessRequest]:
        """Newest first; pending ones only while they have not lapsed."""

    # DPoP proofs seen at the token endpoint
    @abc.abstractmethod
    async def remember_dpop_proof(self, jti: str, expires_at: float, now: float) -> bool:
        """Record a proof's `jti` until `expires_at`, atomically: True when it was new (or its
        earlier record had expired by `now`), False when it is a replay."""

    @abc.abstractmethod
    async def purge_dpop_proofs(self, before: float) -> int:
        """Drop the proof records that expired by `before`; how many went."""

    async def append_audit_with_dpop_proof(self, record: AuditRecord, jti: str, expires_at: float,
                                           now: float) -> AuditRecord | None:
        """`remember_dpop_proof`, then `append_audit` only when the proof was new (None when it
        was a replay). A store that can do both in one transaction does (one durable write)."""
        if not await self.remember_dpop_proof(jti, expires_at, now):
            return None
        return await self.append_audit(record)

    # shadow mode (pdp/shadow/, SQL in pdp/store/shadow.py)
    async def record_shadow(self, counts: list[ShadowCount], samples: list[ShadowSample],
                            samples_per_class: int) -> None:
        """Add `counts` to the stored counts (rows with the same key are summed) and keep each
        sample unless its (minute, class) already holds `samples_per_class`."""
        raise StoreError(f"{type(self).__name__} does not keep shadow comparisons")

    async def shadow_counts(self, since: float | None, until: float | None) -> list[ShadowCount]:
        """Counts of the minutes from `since` to `until` (both minutes included), summed over
        minutes; `bucket` is the earliest minute of each row."""
        raise StoreError(f"{type(self).__name__} does not keep shadow comparisons")

    async def shadow_samples(self, since: float | None, until: float | None,
                             per_class: int) -> list[ShadowSample]:
        """The newest `per_class` samples of each class in the window."""
        raise StoreError(f"{type(self).__name__} does not keep shadow comparisons")

    async def prune_shadow(self, before: float) -> None:
        """Drop shadow counts and samples of minutes before `before`."""
        raise StoreError(f"{type(self).__name__} does not keep shadow comparisons")
