"""Who a verified workload is: its Kubernetes identity (`Subject`, `PodInfo`), the two ways
attestation can fail, and the attestor and pod-reader interfaces. No verifier lives here, so
the policy input and token claims can name a subject without loading one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class AttestationError(Exception):
    """The subject token is not acceptable: `invalid_grant`."""


class AttestationUnavailable(Exception):
    """The broker cannot verify right now (API server or JWKS unreachable): `503`."""


@dataclass(frozen=True)
class PodInfo:
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subject:
    sub: str
    issuer: str
    namespace: str
    service_account: str
    pod: PodInfo | None = None


class Attestor(Protocol):
    async def attest(self, token: str) -> Subject: ...

    async def close(self) -> None: ...


class PodReader(Protocol):
    async def read_pod(self, namespace: str, name: str) -> PodInfo | None:
        """The pod, or None when it does not exist; AttestationUnavailable when unknown."""
