"""Several broker replicas sharing one real PostgreSQL: a revocation made on one is
pushed to the sidecars connected to another, refuses issuance there at once, shows in its
introspection; the replicas publish one JWKS and verify each other's tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import DevIssuer, PodRef
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import (
    POLICIES,
    EventReader,
    ReplicaLauncher,
    file_jti,
    introspect,
    jti_of,
    lift,
    revoked,
    wait_for,
)

pytestmark = pytest.mark.postgres

AUD = "orders-db"
POD = PodRef("api-2", "7c9e6679-7425-40de-944b-e07fc1f90ae7")


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ReplicaLauncher]:
    launcher = ReplicaLauncher(tmp_path, issuer_url="http://jitmesh-broker.jitmesh.svc:8080")
    yield launcher
    launcher.stop_all()


@pytest.fixture
def replicas(make_opa: Callable[..., Any], launcher: ReplicaLauncher,
             postgres_url: str) -> tuple[BrokerHandle, BrokerHandle]:
    opa = make_opa(POLICIES)
    dev = DevIssuer()
    return launcher.replica(opa.url, postgres_url, dev), launcher.replica(opa.url, postgres_url, dev)


def token_from(broker: BrokerHandle, namespace: str = "payments", sa: str = "api") -> str:
    r = broker.exchange(broker.mint(namespace, sa, pod=POD), AUD, scope="read")
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_revoke_on_a_removes_the_file_of_a_sidecar_connected_to_b_and_b_introspects_inactive(
        replicas: tuple[BrokerHandle, BrokerHandle], make_sidecar: Callable[..., SidecarProcess],
        tmp_path: Path) -> None:
    a, b = replicas
    sa_file = tmp_path / "sa.jwt"
    sa_file.write_text(b.mint("payments", "api", pod=POD, ttl=3600))
    sc = make_sidecar(broker_url=b.url, audiences={AUD: ["read"]}, sa_token_file=sa_file, ttl=300)
    wait_for(sc.ready, timeout=20, what="sidecar ready")
    wait_for(lambda: any(e.get("event") == "events.subscribed" for e in sc.events()), timeout=10,
             what="subscribed")
    held = sc.token_file(AUD).read_text()
    assert introspect(b, held)["active"] is True
    revoked(a, jti=jti_of(held), reason="revoked on replica A")
    took = wait_for(lambda: file_jti(sc.token_file(AUD)) != jti_of(held), timeout=5, what="file gone")
    assert took < 1.0
    assert introspect(b, held) == {"active": False}
    wait_for(lambda: file_jti(sc.token_file(AUD)) not in (None, jti_of(held)), timeout=10, what="new token")


def test_a_subject_revoked_on_a_is_refused_on_b_within_a_second_and_again_served_after_a_lift_on_a(
        replicas: tuple[BrokerHandle, BrokerHandle]) -> None:
    a, b = replicas
    token_from(b)
    doc = revoked(a, subject="system:serviceaccount:payments:api")

    def refused_on_b() -> bool:
        r = b.exchange(b.mint("payments", "api", pod=POD), AUD, scope="read")
        return r.status_code == 400 and r.json()["error"] == "invalid_grant"

    assert wait_for(refused_on_b, timeout=5, what="refused on B", step=0.05) < 1.0
    lift(a, doc["id"])
    wait_for(lambda: b.exchange(b.mint("payments", "api", pod=POD), AUD).status_code == 200, timeout=5,
             what="served on B after the lift")


def test_an_admin_stream_on_b_carries_revocations_made_on_a(replicas: tuple[BrokerHandle, BrokerHandle]) -> None:
    a, b = replicas
    with EventReader(b.url, b.admin_token) as events:
        events.next_of("ready")
        doc = revoked(a, audience="billing", reason="from A")
        _, ev = events.next_of("revoked")
    assert ev["id"] == doc["id"] and ev["reason"] == "from A"


def test_replicas_publish_one_jwks_and_verify_each_others_tokens(
        replicas: tuple[BrokerHandle, BrokerHandle]) -> None:
    a, b = replicas
    assert httpx.get(f"{a.url}/jwks").json() == httpx.get(f"{b.url}/jwks").json()
    assert introspect(b, token_from(a))["active"] is True
    assert introspect(a, token_from(b))["active"] is True


def test_a_key_rotated_in_by_one_replica_verifies_at_once_on_the_other(
        make_opa: Callable[..., Any], launcher: ReplicaLauncher, postgres_url: str) -> None:
    opa = make_opa(POLICIES)
    dev = DevIssuer()
    # A rotates every 4 s; B would notice only after its own 30 s refresh, were it not for the kid
    a = launcher.replica(opa.url, postgres_url, dev, key_rotation=4)
    b = launcher.replica(opa.url, postgres_url, dev, key_rotation=120)
    first = jwt.get_unverified_header(token_from(a))["kid"]
    tokens: list[str] = []

    def signed_with_a_new_key() -> bool:
        tokens.append(token_from(a))
        return bool(jwt.get_unverified_header(tokens[-1])["kid"] != first)

    wait_for(signed_with_a_new_key, timeout=20, what="A signing with a rotated key", step=0.2)
    fresh = tokens[-1]
    kid = jwt.get_unverified_header(fresh)["kid"]
    assert kid not in {k["kid"] for k in httpx.get(f"{b.url}/jwks").json()["keys"]}  # B has not reloaded yet
    assert introspect(b, fresh)["active"] is True
    assert kid in {k["kid"] for k in httpx.get(f"{b.url}/jwks").json()["keys"]}
