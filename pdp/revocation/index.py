"""What is revoked: an in-memory index of the store's revocations in force, kept current from
the store's revocation event log, so the issuance hot path asks a dict, not the store.

Issuance is refused to a revoked subject, pod or audience while the revocation is active.
Introspection reports a token inactive when its jti (or its subject, pod or audience) is
revoked, and also when such a revocation was lifted but the token was issued before it
(`iat` at or before the revocation's `created_at`): lifting re-opens issuance only
(docs/contract.md §2). A lifted revocation is kept for as long as a token it covers can be
unexpired (`--max-ttl` after it was made, plus the grace). When the index cannot be
refreshed for longer than `max_staleness`, `check_fresh` raises and the broker fails closed
(503) rather than issue against a stale list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from jitmesh.log import get_logger
from pdp.store.base import Revocation, RevocationEvent, RevocationKind, Store, StoreError

log = get_logger("pdp.revocation")


class RevocationIndexStale(Exception):
    """The index has not been refreshed from the store recently enough to trust."""


# A jti (or pod) revocation names tokens that expire; an hour after the last of them expired
# (resource servers allow some clock skew), it can refuse nothing more and is purged with its
# events. A lifted revocation is purged a month after the lift, and never before every token
# issued before it has expired; the audit trail keeps both.
EXPIRED_GRACE = 3600.0
LIFTED_RETENTION = 30 * 86400.0
PURGE_EVERY = 3600.0


def _issued_at(claims: Mapping[str, Any]) -> float | None:
    iat = claims.get("iat")
    return float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None


class RevocationIndex:
    def __init__(self, store: Store, max_staleness: float = 30.0, full_reload_every: float = 60.0,
                 max_token_ttl: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.max_staleness = max_staleness
        self.full_reload_every = full_reload_every
        self.max_token_ttl = max_token_ttl
        self.clock = clock
        self._by_kind: dict[str, dict[str, Revocation]] = {}        # active: refuse issuance and every token
        self._lifted: dict[str, dict[str, list[Revocation]]] = {}   # lifted: the tokens issued before them
        self._by_id: dict[str, Revocation] = {}
        self.seq = 0
        self.refreshed_at: float | None = None  # monotonic
        self._loaded_at = 0.0

    @property
    def lifted_window(self) -> float:
        """How long after it was made a lifted revocation may still cover an unexpired token."""
        return self.max_token_ttl + EXPIRED_GRACE

    # --- reading ------------------------------------------------------------------------
    def lookup(self, kind: RevocationKind, value: str | None) -> Revocation | None:
        """The active revocation of this value, if any."""
        if value is None:
            return None
        return self._by_kind.get(kind, {}).get(value)

    def refusal(self, subject: str, pod_uid: str | None, audience: str) -> Revocation | None:
        """The revocation that refuses new issuance to this subject, pod or audience, if any."""
        return (self.lookup("subject", subject) or self.lookup("pod_uid", pod_uid)
                or self.lookup("audience", audience))

    def _covering(self, kind: RevocationKind, value: Any, iat: float | None) -> Revocation | None:
        if not isinstance(value, str):
            return None
        active = self.lookup(kind, value)
        if active is not None:
            return active
        # a token without a readable iat counts as issued before (fail closed)
        return next((r for r in self._lifted.get(kind, {}).get(value, ())
                     if iat is None or iat <= r.created_at), None)

    def token_revoked(self, claims: Mapping[str, Any]) -> Revocation | None:
        """The revocation that makes this token inactive, if any: an active one of its jti,
        subject, pod or audience, or a lifted one made after the token was issued."""
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        pod_uid = pod.get("uid") if isinstance(pod, dict) else None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        iat = _issued_at(claims)
        return (self._covering("jti", claims.get("jti"), iat) or self._covering("subject", claims.get("sub"), iat)
                or self._covering("pod_uid", pod_uid, iat)
                or next((r for a in audiences if (r := self._covering("audience", a, iat)) is not None), None))

    def in_force(self) -> list[Revocation]:
        """Every revocation that still makes some token inactive: the active ones and the
        lifted ones within their window."""
        return sorted(self._by_id.values(), key=lambda r: (r.created_at, r.id))

    async def snapshot(self) -> tuple[int, list[Revocation]]:
        """The revocations in force and the event seq they reflect (for a resynchronisation)."""
        return self.seq, self.in_force()

    def check_fresh(self) -> None:
        if self.refreshed_at is None or time.monotonic() - self.refreshed_at > self.max_staleness:
            raise RevocationIndexStale("the revocation list could not be refreshed from the store")

    # --- writing ------------------------------------------------------------------------
    def add(self, revocation: Revocation) -> None:
        """Add or update a revocation, active or lifted; a lift is final (an older copy of an
        active revocation does not undo it)."""
        known = self._by_id.get(revocation.id)
        if known is not None and not known.active and revocation.active:
            return
        if known is not None:
            self._forget(known)
        if not revocation.active and revocation.created_at < self.clock() - self.lifted_window:
            return  # every token it covered has expired
        self._by_id[revocation.id] = revocation
        if revocation.active:
            self._by_kind.setdefault(revocation.kind, {})[revocation.value] = revocation
        else:
            self._lifted.setdefault(revocation.kind, {}).setdefault(revocation.value, []).append(revocation)

    def remove(self, revocation_id: str) -> None:
        """The revocation was lifted here: it stops refusing issuance, and keeps covering the
        tokens issued before it (the `lifted` event brings who and when)."""
        known = self._by_id.get(revocation_id)
        if known is not None and known.active:
            self.add(replace(known, lifted_at=self.clock()))

    def _forget(self, old: Revocation) -> None:
        self._by_id.pop(old.id, None)
        if not old.active:
            values = self._lifted.get(old.kind, {})
            kept = [r for r in values.get(old.value, []) if r.id != old.id]
            if kept:
                values[old.value] = kept
            else:
                values.pop(old.value, None)
            return
        bucket = self._by_kind.get(old.kind, {})
        if bucket.get(old.value) is old:
            del bucket[old.value]
            # another active revocation of the same value keeps it revoked
            for other in self._by_id.values():
                if other.active and other.kind == old.kind and other.value == old.value:
                    bucket[old.value] = other
                    break

    def _rebuild(self, revocations: list[Revocation]) -> None:
        self._by_kind, self._lifted, self._by_id = {}, {}, {}
        for r in revocations:
            self.add(r)

    def apply(self, events: list[RevocationEvent]) -> None:
        for ev in events:
            self.add(ev.revocation)  # a lifted event's revocation carries lifted_at
            self.seq = max(self.seq, ev.seq)

    async def load(self) -> None:
        """Reload everything: the revocations in force and the event log position."""
        seq = max(self.seq, await self.store.last_revocation_seq())  # events after it are applied later
        in_force = await self.store.revocations_in_force(self.clock() - self.lifted_window)
        self._rebuild(in_force)
        self.seq = seq
        self._loaded_at = self.refreshed_at = time.monotonic()

    async def purge(self, now: float) -> int:
        """Purge what can no longer matter from the store (see EXPIRED_GRACE) and from this
        index; how many revocations the store dropped."""
        expired_before = now - EXPIRED_GRACE
        # lifted_at >= created_at, so this also waits until every token the revocation covers expired
        lifted_before = now - max(LIFTED_RETENTION, self.lifted_window)
        purged = await self.store.purge_revocations(expired_before, lifted_before)
        keep = [r for r in self._by_id.values()
                if (r.expires_at is None or r.expires_at >= expired_before)
                and (r.active or r.created_at >= now - self.lifted_window)]
        if len(keep) != len(self._by_id):
            self._rebuild(keep)
        if purged:
            log.info("revocations.purged", count=purged, expired_before=expired_before)
        return purged

    async def refresh(self, wait: float = 0.0) -> None:
        """Apply new events (waiting up to `wait` seconds for one); reload in full now and then."""
        if time.monotonic() - self._loaded_at >= self.full_reload_every:
            await self.load()
            return
        if wait > 0:
            events = await self.store.wait_revocation_events(self.seq, timeout=wait)
        else:
            events = await self.store.revocation_events(after_seq=self.seq)
        self.apply(events)
        self.refreshed_at = time.monotonic()

    async def run(self, wait: float = 2.0) -> None:
        """Keep the index current until cancelled."""
        while True:
            try:
                await self.refresh(wait=wait)
            except StoreError as exc:
                log.warning("revocations.refresh_failed", error=str(exc))
                await asyncio.sleep(1.0)
            except Exception:  # keep trying; meanwhile the index goes stale and issuance fails closed
                log.error("revocations.refresh_failed", exc_info=True)
                await asyncio.sleep(1.0)
