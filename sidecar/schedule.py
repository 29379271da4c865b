"""When to ask the broker next: refresh inside a jittered window of the token's lifetime,
back off exponentially with jitter after failures, poll a pending approval at its interval.
Jitter keeps a thousand pods started together from asking together."""

from __future__ import annotations

import random

# RFC 8628 section 3.5: default polling interval, and the step `slow_down` adds to it.
DEFAULT_POLL_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0


def refresh_delay(usable_lifetime: float, window: tuple[float, float], rng: random.Random) -> float:
    """Seconds from now to refresh a token usable for `usable_lifetime` more seconds:
    a uniformly random point in the fraction `window` of it."""
    lo, hi = window
    return max(0.0, usable_lifetime) * rng.uniform(lo, hi)


def backoff_delay(failures: int, initial: float, ceiling: float, rng: random.Random) -> float:
    """Delay after the `failures`-th consecutive failure (1-based): the exponential step
    initial * 2**(failures-1), capped at `ceiling`, with "equal jitter" (half fixed, half
    random), so the delay still grows while retries from many pods spread out."""
    step = min(ceiling, initial * 2.0 ** min(max(failures, 1) - 1, 62))
    return step / 2 + rng.uniform(0.0, step / 2)


def retry_delay(failures: int, initial: float, ceiling: float, rng: random.Random,
                retry_after: float | None = None) -> float:
    """The backoff delay, but never sooner than the broker's `Retry-After` (itself capped at `ceiling`)."""
    delay = backoff_delay(failures, initial, ceiling, rng)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, ceiling))
    return delay


def poll_interval(interval: object, previous: float | None, slow_down: bool) -> float:
    """The pending-approval polling interval: the broker's `interval` when it gives a positive
    number, else the previous one or RFC 8628's default; `slow_down` adds 5 seconds."""
    base = previous if previous is not None else DEFAULT_POLL_INTERVAL
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
        base = float(interval)
    return base + SLOW_DOWN_STEP if slow_down else base
