"""The sidecar's Prometheus metrics, in a registry of its own (one per agent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.refreshes = Counter("jitmesh_sidecar_refreshes", "Tokens obtained from the broker",
                                 ["audience"], registry=self.registry)
        self.failures = Counter("jitmesh_sidecar_refresh_failures", "Failed token requests by reason",
                                ["audience", "reason"], registry=self.registry)
        self.pending = Counter("jitmesh_sidecar_authorization_pending",
                               "Answers saying a human approval is pending", ["audience"], registry=self.registry)
        self.expired = Counter("jitmesh_sidecar_tokens_expired",
                               "Tokens removed because they expired without renewal", ["audience"],
                               registry=self.registry)
        self.revoked = Counter("jitmesh_sidecar_tokens_revoked", "Tokens dropped on a revocation event",
                               ["audience"], registry=self.registry)
        self.expiry = Gauge("jitmesh_sidecar_token_expiry_timestamp_seconds",
                            "Unix time the current token stops being served (0: no token)", ["audience"],
                            registry=self.registry)
        self.valid = Gauge("jitmesh_sidecar_token_valid", "1 while the audience has a valid token",
                           ["audience"], registry=self.registry)

    def declare(self, audience: str) -> None:
        """Make an audience's series visible before anything happened to it."""
        self.refreshes.labels(audience)
        self.expiry.labels(audience).set(0)
        self.valid.labels(audience).set(0)

    def token_set(self, audience: str, expires_at: float) -> None:
        self.expiry.labels(audience).set(expires_at)
        self.valid.labels(audience).set(1)

    def token_cleared(self, audience: str) -> None:
        self.expiry.labels(audience).set(0)
        self.valid.labels(audience).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
