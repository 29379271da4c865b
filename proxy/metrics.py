"""The proxy's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("jitmesh_proxy_decisions", "Requests decided, by outcome",
                                 ["outcome", "audience"], registry=self.registry)
        self.policy_seconds = Histogram("jitmesh_proxy_policy_seconds", "Time to evaluate the access policy",
                                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
                                        registry=self.registry)
        self.upstream_errors = Counter("jitmesh_proxy_upstream_errors", "Requests the upstream did not answer",
                                       ["reason"], registry=self.registry)
        self.jwks_fetches = Gauge("jitmesh_proxy_jwks_fetches", "Calls made to the broker's /jwks so far",
                                  registry=self.registry)
        for outcome in ("allow", "deny", "unauthenticated", "unavailable", "policy_error", "bad_request"):
            self.decisions.labels(outcome, "")

    def render(self) -> bytes:
        return generate_latest(self.registry)
