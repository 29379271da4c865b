"""What the proxy knows to be revoked, learned from the broker's event stream only (never
by a per-request call; docs/contract.md §2 and §7).

A jti revocation refuses that token. A subject, pod or audience revocation refuses every
token of it issued up to the revocation; lifting one re-opens issuance only, so a token
issued before the revocation stays refused (by its `iat`) also after the lift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

_KINDS = ("jti", "subject", "pod_uid", "audience")
# a lifted revocation still refuses tokens issued before it; none lives longer than a day
FORGET_LIFTED_AFTER = 86400.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class RevocationSet:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # (kind, value) -> (revoked at, lifted or not)
        self._entries: dict[tuple[str, str], tuple[float, bool]] = {}
        self._jti_expiry: dict[str, float] = {}
        self.applied = 0

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, action: str, event: Any) -> bool:
        """Take a `revoked` or `lifted` event's data into account; False when it is not one."""
        if action not in ("revoked", "lifted") or not isinstance(event, Mapping):
            return False
        kind, value = event.get("kind"), event.get("value")
        if kind not in _KINDS or not isinstance(value, str) or not value:
            return False
        created = _number(event.get("created_at"))
        revoked_at = created if created is not None else self._clock()
        key = (kind, value)
        if action == "lifted":
            if kind == "jti":
                return True  # a revoked token stays revoked
            self._entries[key] = (revoked_at, True)
        else:
            self._entries[key] = (revoked_at, False)
            if kind == "jti":
                expires = _number(event.get("expires_at"))
                self._jti_expiry[value] = expires if expires is not None else self._clock() + FORGET_LIFTED_AFTER
        self.applied += 1
        return True

    def resync(self, revocations: Any) -> int:
        """Replace what is known with a `resync` event's full state (the revocations in force,
        a lifted one still refusing the tokens issued before it); how many were taken."""
        if not isinstance(revocations, list):
            return 0
        self._entries, self._jti_expiry = {}, {}
        taken = 0
        for doc in revocations:
            if self.apply("revoked", doc):
                taken += 1
                if isinstance(doc, Mapping) and doc.get("lifted_at") is not None:
                    self.apply("lifted", doc)
        return taken

    def revoked(self, claims: Mapping[str, Any], audience: str) -> str | None:
        """Why this verified token is revoked, or None."""
        jti = claims.get("jti")
        if isinstance(jti, str) and ("jti", jti) in self._entries:
            return "the token was revoked"
        iat = _number(claims.get("iat"))
        k8s = claims.get("kubernetes.io")
        pod = k8s.get("pod") if isinstance(k8s, Mapping) else None
        pod_uid = pod.get("uid") if isinstance(pod, Mapping) else None
        for kind, value in (("subject", claims.get("sub")), ("pod_uid", pod_uid), ("audience", audience)):
            if not isinstance(value, str):
                continue
            entry = self._entries.get((kind, value))
            if entry is None:
                continue
            revoked_at, lifted = entry
            if not lifted or iat is None or iat <= revoked_at:
                return f"the token's {kind.replace('_', ' ')} was revoked"
        return None

    def purge(self) -> None:
        """Forget jti revocations of tokens that have expired and lifted revocations long past."""
        now = self._clock()
        for jti, expires in list(self._jti_expiry.items()):
            if expires < now - 60:
                del self._jti_expiry[jti]
                self._entries.pop(("jti", jti), None)
        for key, (revoked_at, lifted) in list(self._entries.items()):
            if lifted and revoked_at < now - FORGET_LIFTED_AFTER:
                del self._entries[key]
