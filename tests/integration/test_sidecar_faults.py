"""The faults the sidecar survives, each with a real OPA, a real broker process
and a real sidecar process: broker killed, broker down past expiry, policy turning to deny,
a reader racing hundreds of refreshes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess

POLICIES = Path(__file__).parent / "sidecar_policies"
# Quick retries so the tests see several within seconds; removal half a second before `exp`.
FAST = {"JITMESH_BACKOFF_INITIAL": "0.2", "JITMESH_BACKOFF_MAX": "1", "JITMESH_EXPIRY_MARGIN": "0.5"}


@pytest.fixture
def opa(make_opa: Callable[..., Any]) -> Any:
    return make_opa(POLICIES)


@pytest.fixture
def broker(opa: Any, broker_factory: Callable[..., Any]) -> Any:
    return broker_factory(opa.url)


@pytest.fixture
def sa_token_file(broker: Any, tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text(broker.mint("payments", "api", pod=PodRef("api-1", "uid-1"), ttl=3600))
    return path


def set_policy(opa: Any, allow: bool, reason: str = "sidecar test policy: access switched off",
               approval_required: bool = False) -> None:
    r = httpx.put(f"{opa.url}/v1/data/sidecar_test", json={"allow": allow, "ttl_seconds": 3600, "deny_reason": reason,
                                                           "approval_required": approval_required}, timeout=5)
    assert r.status_code == 204, r.text


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def exp_of(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def events(sc: SidecarProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in sc.events() if e.get("event") == name]


def status(url: str) -> int:
    return httpx.get(url, timeout=5).status_code


def test_broker_killed_keeps_the_token_retries_with_backoff_and_refreshes_when_back(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      ttl=20, extra={**FAST, "JITMESH_REFRESH_AFTER": "0.2-0.25"})
    path = sc.token_file("orders-db")
    wait_for(lambda: read(path) is not None, what="first token")
    first = read(path)
    assert first is not None
    broker.kill()
    wait_for(lambda: len(events(sc, "token.refresh_failed")) >= 3, what="three failed refreshes")
    assert read(path) == first and status(f"{sc.url}/readyz") == 200
    failed = events(sc, "token.refresh_failed")
    assert [e["failures"] for e in failed[:3]] == [1, 2, 3] and {e["reason"] for e in failed} == {"unreachable"}
    assert failed[0]["retry_in"] < failed[2]["retry_in"]
    broker.restart()
    back = time.monotonic()
    wait_for(lambda: read(path) not in (None, first), what="a refreshed token")
    assert time.monotonic() - back < 2.0  # at most one backoff step (1 s) after the broker answers
    assert time.time() < exp_of(first)  # renewed before the old one ran out: never a gap
    # The sidecar logs after it renames the file into place, so the line may trail the file.
    wait_for(lambda: bool(events(sc, "token.refreshed")), timeout=2, what="token.refreshed logged")


def test_broker_down_past_expiry_removes_the_file_and_recovers(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      ttl=4, extra=FAST)
    path = sc.token_file("orders-db")
    wait_for(lambda: read(path) is not None, what="first token")
    broker.kill()
    token = read(path)  # the newest token before the broker went away
    assert token is not None
    exp = exp_of(token)
    while (current := read(path)) is not None:
        assert time.time() < exp, "the file outlived its token"
        token = current
        exp = exp_of(token)
        time.sleep(0.01)
    removed = time.time()
    assert exp - 1.5 <= removed < exp  # kept until just before `exp` (0.5 s margin plus polling)
    assert status(f"{sc.url}/readyz") == 503 and status(f"{sc.url}/v1/token/orders-db") == 503
    wait_for(lambda: bool(events(sc, "token.expired")), timeout=2, what="token.expired logged")  # logged after removal
    broker.restart()
    wait_for(lambda: read(path) is not None, what="a token after the broker returned")
    wait_for(lambda: status(f"{sc.url}/readyz") == 200, timeout=5, what="/readyz")


def test_policy_turning_to_deny_keeps_the_token_until_expiry_and_logs_the_reasons(
        opa: Any, broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      ttl=5, extra=FAST)
    path = sc.token_file("orders-db")
    wait_for(lambda: read(path) is not None, what="first token")
    set_policy(opa, allow=False, reason="change freeze for payments")
    wait_for(lambda: bool(events(sc, "token.denied")), what="a denial")
    token = read(path)
    assert token is not None, "the still-valid token was dropped on the first denial"
    wait_for(lambda: read(path) is None, timeout=10, what="removal at expiry")
    assert time.time() < exp_of(token)
    assert status(f"{sc.url}/readyz") == 503
    denied = events(sc, "token.denied")
    assert "change freeze for payments" in denied[0]["reasons"] and denied[0]["decision_id"]
    assert all(e["reason"] == "access_denied" for e in denied)
    set_policy(opa, allow=True)
    wait_for(lambda: read(path) is not None, what="a token once the policy allows again")


def test_reader_never_sees_a_partial_empty_or_expired_token_during_hundreds_of_refreshes(
        broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    audiences = {"a": ["read"], "b": ["read"], "c": ["read"]}
    sc = make_sidecar(broker_url=broker.url, audiences=audiences, sa_token_file=sa_token_file, ttl=2,
                      extra={**FAST, "JITMESH_EXPIRY_MARGIN": "0.3", "JITMESH_REFRESH_AFTER": "0.1-0.15"})
    wait_for(sc.ready, what="/readyz")
    seen: dict[str, set[str]] = {a: set() for a in audiences}
    problems: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for audience in audiences:
                text = read(sc.token_file(audience))
                now = time.time()
                reads += 1
                if not text:
                    problems.append(f"{audience}: {'missing' if text is None else 'empty'} file")
                    continue
                try:
                    if exp_of(text) <= now:
                        problems.append(f"{audience}: expired token")
                except jwt.DecodeError:
                    problems.append(f"{audience}: partial token {text[:20]}...")
                    continue
                seen[audience].add(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_for(lambda: sum(len(s) for s in seen.values()) >= 300, timeout=60, what="300 refreshes")
    finally:
        stop.set()
        thread.join()
    assert problems == [], problems[:5]
    jwks = jwt.PyJWKSet.from_dict(httpx.get(f"{broker.url}/jwks", timeout=5).json())
    for audience, tokens in seen.items():
        for token in tokens:  # every token read was whole and signed by the broker
            key = next(k for k in jwks.keys if k.key_id == jwt.get_unverified_header(token)["kid"])
            jwt.decode(token, key, algorithms=["ES256"], audience=audience, options={"verify_exp": False})
    assert reads > 1000


def test_pending_approval_is_polled_at_the_brokers_interval_until_granted(
        opa: Any, broker: Any, sa_token_file: Path, make_sidecar: Callable[..., SidecarProcess]) -> None:
    set_policy(opa, allow=False, reason="needs a human", approval_required=True)
    sc = make_sidecar(broker_url=broker.url, audiences={"orders-db": ["read"]}, sa_token_file=sa_token_file,
                      ttl=60, extra=FAST)
    wait_for(lambda: len(events(sc, "token.pending")) >= 2, timeout=20, what="two pending answers")
    pending = events(sc, "token.pending")
    assert pending[0]["retry_in"] == 5.0 and pending[0]["access_request_id"]  # the broker's interval
    gap = (datetime.fromisoformat(str(pending[1]["ts"])) - datetime.fromisoformat(str(pending[0]["ts"])))
    assert 4.9 <= gap.total_seconds() <= 7.0
    assert not events(sc, "token.refresh_failed")  # pending is not a failure: no fast backoff retries
    set_policy(opa, allow=True)
    wait_for(lambda: read(sc.token_file("orders-db")) is not None, timeout=10, what="a token once approved")
