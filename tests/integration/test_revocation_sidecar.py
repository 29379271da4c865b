"""Real sidecars react to the broker's revocation events (docs/contract.md §5): the file
of a revoked token goes at once and a new token is asked for; events concerning other
workloads change nothing; a stream that drops is resumed without losing an event."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import POLICIES, file_jti, lift, revoked, wait_for

AUD = "orders-db"
POD = PodRef("api-7d9c", "0b6d3f7a-9c1e-4d2b-8a55-2f1e0c9d8b7a")


@pytest.fixture
def broker(make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return broker_factory(make_opa(POLICIES).url)


def start_sidecar(make_sidecar: Callable[..., SidecarProcess], broker: BrokerHandle, tmp_path: Path,
                  namespace: str = "payments", sa: str = "api", pod: PodRef | None = POD,
                  audiences: dict[str, list[str]] | None = None, name: str = "sa") -> SidecarProcess:
    sa_file = tmp_path / f"{name}.jwt"
    sa_file.write_text(broker.mint(namespace, sa, pod=pod, ttl=3600))
    sc = make_sidecar(broker_url=broker.url, audiences=audiences or {AUD: ["read"]}, sa_token_file=sa_file,
                      ttl=300)
    wait_for(sc.ready, timeout=20, what="sidecar ready")
    wait_for(lambda: any(e.get("event") == "events.subscribed" for e in sc.events()), timeout=10,
             what="sidecar subscribed to revocation events")
    return sc


def test_revoking_the_sidecars_jti_removes_its_file_within_a_second_and_a_new_token_follows(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    path = sc.token_file(AUD)
    old = file_jti(path)
    assert old
    revoked(broker, jti=old, reason="leaked")
    took = wait_for(lambda: file_jti(path) != old, timeout=5, what="revoked token file gone")
    assert took < 1.0
    wait_for(lambda: file_jti(path) not in (None, old), timeout=10, what="a new token")
    wait_for(lambda: any(e.get("event") == "token.revoked" and e.get("jti") == old for e in sc.events()),
             timeout=5, what="the revocation logged by the sidecar")


def test_revoking_the_sidecars_subject_removes_the_file_and_keeps_it_away_until_lifted(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path, audiences={AUD: ["read"], "billing": []})
    doc = revoked(broker, subject="system:serviceaccount:payments:api", reason="compromised")
    wait_for(lambda: not sc.token_file(AUD).exists() and not sc.token_file("billing").exists(), timeout=1.0,
             what="both token files gone")
    time.sleep(1.5)  # it asks again and is refused
    assert not sc.token_file(AUD).exists() and not sc.token_file("billing").exists()
    assert lift(broker, doc["id"]).status_code == 200
    wait_for(lambda: sc.token_file(AUD).exists(), timeout=40, what="token back after the lift")


def test_revoking_the_sidecars_pod_uid_removes_its_file(broker: BrokerHandle,
                                                        make_sidecar: Callable[..., SidecarProcess],
                                                        tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    revoked(broker, pod_uid=POD.uid, reason="pod evicted")
    wait_for(lambda: not sc.token_file(AUD).exists(), timeout=1.0, what="token file gone")


def test_revoking_an_audience_removes_only_that_audiences_file(broker: BrokerHandle,
                                                               make_sidecar: Callable[..., SidecarProcess],
                                                               tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path, audiences={AUD: ["read"], "billing": []})
    billing = file_jti(sc.token_file("billing"))
    revoked(broker, audience=AUD, reason="database rotated")
    wait_for(lambda: not sc.token_file(AUD).exists(), timeout=1.0, what="orders-db file gone")
    assert file_jti(sc.token_file("billing")) == billing


def test_revocations_of_other_workloads_leave_the_sidecars_token_alone(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sc = start_sidecar(make_sidecar, broker, tmp_path)
    other = start_sidecar(make_sidecar, broker, tmp_path, namespace="shop", sa="web",
                          pod=PodRef("web-1", "11111111-0000-4000-8000-000000000001"), name="other")
    mine = file_jti(sc.token_file(AUD))
    theirs = file_jti(other.token_file(AUD))
    revoked(broker, subject="system:serviceaccount:shop:web")
    wait_for(lambda: not other.token_file(AUD).exists(), timeout=1.0, what="the other workload's file gone")
    revoked(broker, jti=str(theirs) + "-not-held")
    revoked(broker, pod_uid="11111111-0000-4000-8000-000000000001")
    time.sleep(0.5)
    assert file_jti(sc.token_file(AUD)) == mine
    assert not any(e.get("event") == "token.revoked" for e in sc.events())


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_sidecar_whose_stream_dropped_applies_revocations_made_meanwhile(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_sidecar: Callable[..., SidecarProcess], tmp_path: Path, how: str) -> None:
    """Broker A (the sidecar's) is stopped or killed; the revocation is made on broker B
    sharing A's store while A is down; when A is back, the sidecar resumes from its last
    event id."""
    opa = make_opa(POLICIES)
    a = broker_factory(opa.url)
    b = broker_factory(opa.url, issuer=a.issuer, store=a.store_url)
    sc = start_sidecar(make_sidecar, a, tmp_path)
    old = file_jti(sc.token_file(AUD))
    if how == "killed":
        a.kill()
    else:
        a.stop()
    revoked(b, audience="unrelated-while-down")
    revoked(b, jti=str(old), reason="revoked while the sidecar's broker was down")
    time.sleep(0.5)
    assert file_jti(sc.token_file(AUD)) == old  # nobody told it yet
    a.process.start(timeout=30)
    wait_for(lambda: file_jti(sc.token_file(AUD)) != old, timeout=10, what="file of the revoked token replaced")
    wait_for(lambda: any(e.get("event") == "token.revoked" and e.get("jti") == old for e in sc.events()),
             timeout=5, what="the revocation logged by the sidecar")
    assert any(e.get("event") == "events.reconnecting" for e in sc.events())


def test_the_stream_ends_with_the_serviceaccount_token_and_resumes_with_the_rotated_one(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sa_file = tmp_path / "short.jwt"
    sa_file.write_text(broker.mint("payments", "api", pod=POD, ttl=4))
    sc = make_sidecar(broker_url=broker.url, audiences={AUD: ["read"]}, sa_token_file=sa_file, ttl=300)
    wait_for(sc.ready, timeout=20, what="sidecar ready")
    sa_file.write_text(broker.mint("payments", "api", pod=POD, ttl=3600))  # what the kubelet does
    wait_for(lambda: sum(e.get("event") == "events.subscribed" for e in sc.events()) >= 2, timeout=15,
             what="a second subscription after the first token expired")
    old = file_jti(sc.token_file(AUD))
    revoked(broker, jti=str(old))
    wait_for(lambda: file_jti(sc.token_file(AUD)) != old, timeout=2, what="revoked file gone")


def test_a_subject_revoked_and_lifted_while_the_sidecars_stream_was_down_still_takes_its_old_token(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
        make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    """A lift re-opens issuance only: the sidecar, back on its broker, drops the token issued
    before the revocation and serves a new one, never the old one again."""
    opa = make_opa(POLICIES)
    a = broker_factory(opa.url)
    b = broker_factory(opa.url, issuer=a.issuer, store=a.store_url)
    sc = start_sidecar(make_sidecar, a, tmp_path)
    old = file_jti(sc.token_file(AUD))
    a.stop()
    doc = revoked(b, subject="system:serviceaccount:payments:api", reason="revoked and lifted while down")
    time.sleep(1.1)  # a token after the lift is issued in a later second than the revocation
    assert lift(b, doc["id"]).status_code == 200
    a.process.start(timeout=30)
    wait_for(lambda: file_jti(sc.token_file(AUD)) != old, timeout=10, what="the old token's file gone")
    wait_for(lambda: file_jti(sc.token_file(AUD)) not in (None, old), timeout=20, what="a new token after the lift")
    time.sleep(1.0)
    assert file_jti(sc.token_file(AUD)) != old
