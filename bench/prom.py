"""Reading the broker's own latency histograms from its Prometheus /metrics, so a run can
say how much of the latency a client sees is spent in the handler and in the OPA call."""

from __future__ import annotations

import math

import httpx

REQUEST = "jitmesh_token_request_seconds"
OPA_CALL = "jitmesh_opa_request_seconds"


def parse_sums(text: str) -> dict[str, float]:
    """`<histogram>_sum` and `<histogram>_count` samples without labels, by sample name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if "{" in name or not name.endswith(("_sum", "_count")):
            continue
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def mean_ms(before: dict[str, float], after: dict[str, float], histogram: str) -> float | None:
    """Mean of the observations a histogram gained between two scrapes, in milliseconds."""
    try:
        count = after[f"{histogram}_count"] - before.get(f"{histogram}_count", 0.0)
        total = after[f"{histogram}_sum"] - before.get(f"{histogram}_sum", 0.0)
    except KeyError:
        return None
    if count <= 0 or math.isnan(total):
        return None
    return total / count * 1000


def scrape(base_url: str) -> dict[str, float]:
    try:
        r = httpx.get(f"{base_url}/metrics", timeout=5)
    except httpx.HTTPError:
        return {}
    return parse_sums(r.text) if r.status_code == 200 else {}
