"""Human approval, end to end: a real OPA on the shipped policy (with test grants), a real
broker, its admin API and `jitmesh approvals`, and a real sidecar polling until approved."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import PodRef
from sidecar.process import SidecarProcess
from tests.fixtures.broker import BrokerHandle

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "authz.rego"  # the shipped policy, not a test double
DATA = Path(__file__).parent / "approval_data" / "data.json"
POD = PodRef("reconciler-1", "7a1e0000-0000-4000-8000-000000000001")


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICY, DATA).url, approval_ttl=120)


def ask(broker: BrokerHandle, sa: str = "reconciler", scope: str = "read write", **form: str) -> httpx.Response:
    return broker.exchange(broker.mint("finance", sa, pod=POD), "ledger", scope=scope, **form)


def pending_id(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "authorization_pending", body
    assert body["interval"] == 5
    return str(body["access_request_id"])


def admin(broker: BrokerHandle, method: str, path: str, headers: dict[str, str] | None = None,
          **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{broker.url}{path}", headers={**broker.admin_headers(), **(headers or {})},
                         timeout=10, **kw)


def decide(broker: BrokerHandle, rid: str, verb: str, reason: str | None = None) -> httpx.Response:
    return admin(broker, "POST", f"/v1/admin/access-requests/{rid}/{verb}",
                 json={} if reason is None else {"reason": reason})


def test_pending_until_approved_then_issued_and_refreshes_need_no_new_approval(broker: BrokerHandle) -> None:
    rid = pending_id(ask(broker))
    assert pending_id(ask(broker, access_request_id=rid)) == rid  # polling keeps the same request
    assert pending_id(ask(broker)) == rid  # so does asking again without the id
    listed = admin(broker, "GET", "/v1/admin/access-requests", params={"status": "pending"}).json()
    mine = next(x for x in listed["access_requests"] if x["id"] == rid)
    assert (mine["subject"], mine["audience"], mine["scopes"], mine["pod_uid"]) == (
        "system:serviceaccount:finance:reconciler", "ledger", ["read", "write"], POD.uid)

    r = decide(broker, rid, "approve", "CHG-1234")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["reason"]) == ("approved", "CHG-1234")
    assert r.json()["decided_by"].startswith("admin-token")

    r = ask(broker, access_request_id=rid)
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "ledger" and claims["scope"] == "read write"
    assert claims["exp"] - claims["iat"] <= 120  # 300 s asked, but no token outlives the approval (--approval-ttl)
    assert ask(broker).status_code == 200  # a refresh within --approval-ttl needs no new approval

    records = admin(broker, "GET", "/v1/admin/audit", params={"event": "access_approved", "limit": 100}).json()
    rec = next(x for x in records["records"] if x["details"]["access_request_id"] == rid)
    assert rec["subject"] == "system:serviceaccount:finance:reconciler" and rec["details"]["reason"] == "CHG-1234"
    issued = admin(broker, "GET", "/v1/admin/audit", params={"event": "issued", "limit": 1000}).json()["records"]
    rec = next(x for x in issued if x["decision_id"] == r.json()["decision_id"])
    assert rec["details"]["input"]["approval"]["access_request_id"] == rid


def test_a_denied_request_is_refused_with_the_reason_and_stays_refused(broker: BrokerHandle) -> None:
    rid = pending_id(ask(broker, sa="auditor", scope="read"))
    assert decide(broker, rid, "deny").status_code == 400  # a denial needs a reason
    r = decide(broker, rid, "deny", "not during the freeze")
    assert r.status_code == 200 and r.json()["status"] == "denied"
    for _ in range(2):
        r = ask(broker, sa="auditor", scope="read", access_request_id=rid)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "access_denied" and "was refused" in r.json()["error_description"]
    denied = admin(broker, "GET", "/v1/admin/access-requests", params={"status": "denied"}).json()
    assert rid in [x["id"] for x in denied["access_requests"]]


def test_an_approval_covers_only_its_own_subject_and_scopes(broker: BrokerHandle) -> None:
    rid = pending_id(ask(broker, sa="clerk", scope="write"))
    assert decide(broker, rid, "approve").status_code == 200
    other = pending_id(ask(broker, sa="teller", scope="write", access_request_id=rid))  # someone else's id
    assert other != rid
    narrower = pending_id(ask(broker, sa="clerk", scope="read"))  # other scopes: their own request
    assert narrower not in (rid, other)


def test_deciding_twice_or_an_unknown_request_is_a_clear_error(broker: BrokerHandle) -> None:
    rid = pending_id(ask(broker, sa="cashier", scope="read write"))
    assert decide(broker, rid, "approve").status_code == 200
    r = decide(broker, rid, "deny", "too late")
    assert r.status_code == 409 and "approved by" in r.json()["error_description"]
    r = decide(broker, "0000-no-such-request", "approve")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    records = admin(broker, "GET", "/v1/admin/audit", params={"event": "admin", "limit": 1000}).json()["records"]
    actions = {x["details"]["action"] for x in records}
    assert {"access_request.deny_refused", "access_request.approve_unknown"} <= actions  # refused calls audited too


@pytest.mark.parametrize(("body", "message"), [
    (b"[1, 2]", "JSON object"),
    (b"{not json", "not valid JSON"),
    (b'{"reason": 5}', "reason must be a string"),
    (b'{"reason": "x", "extra": 1}', "unknown field"),
])
def test_bad_decision_bodies_are_400_naming_the_problem(broker: BrokerHandle, body: bytes, message: str) -> None:
    rid = pending_id(ask(broker, sa="banker", scope="read", access_request_id="bad-body-probe"))
    r = admin(broker, "POST", f"/v1/admin/access-requests/{rid}/approve", content=body,
              headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert message in r.json()["error_description"]


def test_bad_listing_arguments_a_malformed_request_id_and_no_admin_are_refused(broker: BrokerHandle) -> None:
    r = admin(broker, "GET", "/v1/admin/access-requests", params={"status": "maybe"})
    assert r.status_code == 400 and "expected one of pending, approved, denied" in r.json()["error_description"]
    r = admin(broker, "GET", "/v1/admin/access-requests", params={"limit": "0"})
    assert r.status_code == 400
    r = ask(broker, access_request_id="../../etc/passwd")
    assert r.status_code == 400 and "access_request_id" in r.json()["error_description"]
    r = httpx.post(f"{broker.url}/v1/admin/access-requests/x/approve", json={}, timeout=10)
    assert r.status_code == 401


def jitmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jitmesh.cli", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=ROOT)


def test_jitmesh_approvals_lists_and_approves(broker: BrokerHandle) -> None:
    rid = pending_id(ask(broker, sa="teller", scope="read write write"))  # a repeated scope counts once
    common = ["--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file)]
    out = jitmesh("approvals", *common)
    assert out.returncode == 0, out.stderr
    out = jitmesh("approvals", *common, "--deny", rid)
    assert out.returncode == 2 and "--reason is required" in out.stderr
    out = jitmesh("approvals", *common, "--status", "all", "--json")
    assert out.returncode == 0 and rid in [x["id"] for x in json.loads(out.stdout)["access_requests"]]


def test_a_sidecar_polls_while_pending_and_writes_the_token_once_approved(
        broker: BrokerHandle, make_sidecar: Callable[..., SidecarProcess], tmp_path: Path) -> None:
    sa_file = tmp_path / "sa-token"
    sa_file.write_text(broker.mint("finance", "porter", pod=POD, ttl=3600))
    sc = make_sidecar(broker_url=broker.url, audiences={"ledger": []}, sa_token_file=sa_file, ttl=60)
    deadline = time.monotonic() + 20
    pending: list[dict[str, Any]] = []
    while not pending and time.monotonic() < deadline:
        pending = [e for e in sc.events() if e.get("event") == "token.pending"]
        time.sleep(0.1)
    assert pending, sc.output()[-2000:]
    rid = str(pending[0]["access_request_id"])
    assert not sc.token_file("ledger").exists()
    assert decide(broker, rid, "approve", "CHG-9").status_code == 200
    deadline = time.monotonic() + 15  # the next poll, at the broker's 5 s interval
    while not sc.token_file("ledger").exists():
        assert time.monotonic() < deadline, sc.output()[-2000:]
        time.sleep(0.1)
    claims = jwt.decode(sc.token_file("ledger").read_text(), options={"verify_signature": False})
    assert claims["aud"] == "ledger"


def test_token_command_on_a_pending_approval_prints_the_request_id_and_the_approve_line(
        broker: BrokerHandle, tmp_path: Path) -> None:
    sa = tmp_path / "sa.jwt"
    sa.write_text(broker.mint("finance", "notary", pod=POD))
    p = subprocess.run([sys.executable, "-m", "jitmesh.cli", "token", "--broker-url", broker.url,
                        "--audience", "ledger", "--scope", "read", "--subject-token-file", str(sa)],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 1 and p.stdout == ""
    rid = pending_id(ask(broker, sa="notary", scope="read"))  # the same request, asked again
    assert f"jitmesh approvals --broker-url {broker.url} --approve {rid}" in p.stderr
