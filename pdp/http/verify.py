"""Verifying one of this broker's own tokens (revocation by the holder, introspection),
reloading the keys from the store when a token names a key another replica just rotated in."""


from __future__ import annotations

import time
from typing import Any

import jwt

from jitmesh.log import get_logger
from pdp.http.services import Broker
from pdp.store.base import StoreError

log = get_logger("pdp.revocations")

KEY_RELOAD_MIN_INTERVAL = 1.0  # seconds between reloads of the keys for an unknown kid


async def verify_token(broker: Broker, token: str) -> dict[str, Any] | None:
    """`KeyRing.verify`, reloading the keys from the store (at most once a second) when the
    token names a kid this replica has not loaded yet."""
    claims = broker.keys.verify(token, broker.config.issuer)
    if claims is not None:
        return claims
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        return None
    known = {k.get("kid") for k in broker.keys.jwks().get("keys", [])}
    now = time.monotonic()
    if not isinstance(kid, str) or kid in known or now - broker.last_key_reload < KEY_RELOAD_MIN_INTERVAL:
        return None
    broker.last_key_reload = now
    try:
        await broker.keys.refresh(broker.clock())
    except StoreError as exc:
        log.warning("keys.reload_failed", kid=kid, error=str(exc))
        return None
    return broker.keys.verify(token, broker.config.issuer)


