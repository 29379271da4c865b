"""The broker's signing keys as a verifier sees them: `/jwks`, cached, refetched on an
unknown `kid` at most once per `min_refetch` seconds (a flood of made-up kids costs the
broker one call per interval), refreshed in the background, and refused as stale once the
last good fetch is older than `max_staleness` (docs/contract.md §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from jitmesh.log import get_logger

log = get_logger("proxy.keys")

MIN_REFETCH_SECONDS = 5.0
MAX_STALENESS_SECONDS = 300.0


class KeysUnavailable(Exception):
    """No key set fresh enough to trust: the caller answers 503."""


def parse_jwks(doc: Any) -> dict[str, Any]:
    """kid -> public key, for the ES256 (P-256) signing keys of a JWKS document; others are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("a JWKS document is a JSON object with a `keys` list")
    keys: dict[str, Any] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or jwk.get("alg") not in (None, "ES256"):
            continue
        if jwk.get("use") not in (None, "sig"):
            continue
        try:
            keys[jwk["kid"]] = jwt.PyJWK(jwk, "ES256").key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            log.warning("jwks.bad_key", kid=jwk["kid"][:80])
    return keys


class JWKSCache:
    def __init__(self, fetch: Callable[[], Awaitable[Any]], *, min_refetch: float = MIN_REFETCH_SECONDS,
                 max_staleness: float = MAX_STALENESS_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.min_refetch = min_refetch
        self.max_staleness = max_staleness
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at <= self.max_staleness

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    async def refresh(self) -> bool:
        """Fetch the key set now; False (and the old keys kept) when the broker cannot give it."""
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch())
        except Exception as exc:  # any failure to fetch or parse keeps the last good set
            log.warning("jwks.fetch_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return False
        self._keys = keys
        self._fetched_at = self._clock()
        return True

    async def key(self, kid: str) -> Any | None:
        """The key for `kid`, refetching (rate-limited) when it is unknown; None if still unknown."""
        if not self.fresh:
            raise KeysUnavailable("the broker's signing keys could not be fetched recently enough to trust")
        found = self._keys.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._keys.get(kid)
            if found is None and (self._attempted_at is None
                                  or self._clock() - self._attempted_at >= self.min_refetch):
                await self.refresh()
                found = self._keys.get(kid)
        return found
