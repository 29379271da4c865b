"""What is revoked: an in-memory index of the store's active revocations, kept current from
the store's revocation event log, so the issuance hot path asks a dict, not the store.

Issuance is refused to a revoked subject, pod or audience; introspection reports a token
inactive when its jti (or its subject, pod or audience) is revoked. When the index cannot
be refreshed for longer than `max_staleness`, `check_fresh` raises and the broker fails
closed (503) rather than issue against a stale list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from jitmesh.log import get_logger
from pdp.store.base import Revocation, RevocationEvent, RevocationKind, Store, StoreError

log = get_logger("pdp.revocation")


class RevocationIndexStale(Exception):
    """The index has not been refreshed from the store recently enough to trust."""


# A jti (or pod) revocation names tokens that expire; an hour after the last of them expired
# (resource servers allow some clock skew), it can refuse nothing more and is purged with its
# events. Lifted revocations are purged a month after the lift; the audit trail keeps both.
EXPIRED_GRACE = 3600.0
LIFTED_RETENTION = 30 * 86400.0
PURGE_EVERY = 3600.0


class RevocationIndex:
    def __init__(self, store: Store, max_staleness: float = 30.0, full_reload_every: float = 60.0) -> None:
        self.store = store
        self.max_staleness = max_staleness
        self.full_reload_every = full_reload_every
        self._by_kind: dict[str, dict[str, Revocation]] = {}
        self._by_id: dict[str, Revocation] = {}
        self.seq = 0
        self.refreshed_at: float | None = None  # monotonic
        self._loaded_at = 0.0

    # --- reading ------------------------------------------------------------------------
    def lookup(self, kind: RevocationKind, value: str | None) -> Revocation | None:
        if value is None:
            return None
        return self._by_kind.get(kind, {}).get(value)

    def refusal(self, subject: str, pod_uid: str | None, audience: str) -> Revocation | None:
        """The revocation that refuses new issuance to this subject, pod or audience, if any."""
        return (self.lookup("subject", subject) or self.lookup("pod_uid", pod_uid)
                or self.lookup("audience", audience))

    def token_revoked(self, claims: Mapping[str, Any]) -> Revocation | None:
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, dict) else None
        pod_uid = pod.get("uid") if isinstance(pod, dict) else None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        return (self.lookup("jti", claims.get("jti")) or self.lookup("subject", claims.get("sub"))
                or self.lookup("pod_uid", pod_uid)
                or next((r for a in audiences if (r := self.lookup("audience", a)) is not None), None))

    def check_fresh(self) -> None:
        if self.refreshed_at is None or time.monotonic() - self.refreshed_at > self.max_staleness:
            raise RevocationIndexStale("the revocation list could not be refreshed from the store")

    # --- writing ------------------------------------------------------------------------
    def add(self, revocation: Revocation) -> None:
        if not revocation.active:
            self.remove(revocation.id)
            return
        self._by_id[revocation.id] = revocation
        self._by_kind.setdefault(revocation.kind, {})[revocation.value] = revocation

    def remove(self, revocation_id: str) -> None:
        old = self._by_id.pop(revocation_id, None)
        if old is not None:
            bucket = self._by_kind.get(old.kind, {})
            if bucket.get(old.value) is old:
                del bucket[old.value]
                # another active revocation of the same value keeps it revoked
                for other in self._by_id.values():
                    if other.kind == old.kind and other.value == old.value:
                        bucket[old.value] = other
                        break

    def apply(self, events: list[RevocationEvent]) -> None:
        for ev in events:
            if ev.action == "revoked":
                self.add(ev.revocation)
            else:
                self.remove(ev.revocation.id)
            self.seq = max(self.seq, ev.seq)

    async def load(self) -> None:
        """Reload everything: the active revocations and the event log position."""
        seq = max(self.seq, await self.store.last_revocation_seq())  # events after it are applied later
        active = await self.store.active_revocations()
        self._by_kind, self._by_id = {}, {}
        for r in active:
            self.add(r)
        self.seq = seq
        self._loaded_at = self.refreshed_at = time.monotonic()

    async def purge(self, now: float) -> int:
        """Purge what can no longer matter from the store (see EXPIRED_GRACE) and from this
        index; how many revocations the store dropped."""
        expired_before = now - EXPIRED_GRACE
        purged = await self.store.purge_revocations(expired_before, now - LIFTED_RETENTION)
        keep = [r for r in self._by_id.values() if r.expires_at is None or r.expires_at >= expired_before]
        if len(keep) != len(self._by_id):
            self._by_kind, self._by_id = {}, {}
            for r in keep:
                self.add(r)
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
