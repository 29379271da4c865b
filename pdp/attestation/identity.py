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
    issued_at: float | None = None  # the subject token's iat, when it has one


class Attestor(Protocol):
    async def attest(self, token: str) -> Subject: ...

    async def close(self) -> None: ...


def check_subject_age(subject: Subject, max_age: float | None, now: float) -> None:
    """Refuse a subject token issued more than `max_age` seconds ago: a long-lived token
    (`kubectl create token --duration 8760h`, a legacy Secret token) is a standing credential."""
    if max_age is None:
        return
    if subject.issued_at is None:
        raise AttestationError("subject token has no iat claim, so its age cannot be checked against "
                               "--max-subject-token-age")
    age = now - subject.issued_at
    if age > max_age:
        raise AttestationError(f"subject token was issued {int(age)} s ago, more than --max-subject-token-age "
                               f"({int(max_age)} s) allows: use a projected ServiceAccount token or a short "
                               "`kubectl create token --duration`")


class PodReader(Protocol):
    async def read_pod(self, namespace: str, name: str) -> PodInfo | None:
        """The pod, or None when it does not exist; AttestationUnavailable when unknown."""
