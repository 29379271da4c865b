"""Prometheus metrics of the webhook: admissions by outcome, and how long each took."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

OUTCOMES = ("injected", "unchanged", "refused", "namespace_unavailable", "bad_request")


class InjectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.admissions = Counter("jitmesh_injector_admissions", "Admission requests answered, by outcome.",
                                  ["outcome"], registry=self.registry)
        self.latency = Histogram("jitmesh_injector_admission_duration_seconds",
                                 "Time to answer one admission request.", ["outcome"],
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
                                 registry=self.registry)
        for outcome in OUTCOMES:
            self.admissions.labels(outcome)
            self.latency.labels(outcome)

    def observe(self, outcome: str, seconds: float) -> None:
        self.admissions.labels(outcome).inc()
        self.latency.labels(outcome).observe(seconds)
