"""Percentiles and latency summaries of samples the benchmarks collect themselves
(wrk computes its own; these are for the webhook and revocation timings)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least q% of samples at or below it.
    Never interpolates, so a reported p99 is a latency some request really had."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(samples)
    rank = max(1, math.ceil(round(q * len(ordered) / 100, 9)))  # 99.9% of 1000 is 999, not 999.0000000000001
    return ordered[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: float
    p99: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "p50": self.p50, "p99": self.p99, "max": self.max, "mean": self.mean}


def summarize(samples: Sequence[float]) -> LatencySummary:
    if not samples:
        raise ValueError("no samples to summarize")
    return LatencySummary(count=len(samples), p50=percentile(samples, 50), p99=percentile(samples, 99),
                          max=max(samples), mean=sum(samples) / len(samples))


def cpu_share(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time over wall time, as a fraction of one core (2.0 = two cores busy)."""
    if wall_seconds <= 0:
        raise ValueError("wall time must be positive")
    return cpu_seconds / wall_seconds
