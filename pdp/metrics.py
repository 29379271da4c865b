"""Prometheus metrics of one broker app, in a registry of its own (several apps can live in
one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.issued = Counter("jitmesh_tokens_issued", "Access tokens issued", registry=self.registry)
        self.denied = Counter("jitmesh_token_denials", "Token requests refused, by OAuth error",
                              ["reason"], registry=self.registry)
        self.errors = Counter("jitmesh_token_errors", "Token requests that failed closed, by cause",
                              ["reason"], registry=self.registry)
        self.request_seconds = Histogram("jitmesh_token_request_seconds", "Whole /token request latency",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dry_run_allowed = Counter("jitmesh_dry_run_allowed", "Denials issued anyway (--enforcement dry-run)",
                                       registry=self.registry)
        self.opa_seconds = Histogram("jitmesh_opa_request_seconds", "Latency of the OPA decision call",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
