"""Operating a real broker: discovery, the audit API and CLI, the operator's `jitmesh token`,
JSON logs without secrets, and flag validation at start."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker import BrokerHandle

POLICIES = Path(__file__).parent / "policies"
JITMESH = [sys.executable, "-m", "jitmesh.cli"]


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES / "grant").url)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JITMESH, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_discovery_documents_name_every_endpoint(broker: BrokerHandle) -> None:
    doc = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server").json()
    assert doc["issuer"] == broker.url
    assert doc["token_endpoint"] == f"{broker.url}/token"
    assert doc["jwks_uri"] == f"{broker.url}/jwks"
    assert doc["revocation_endpoint"] == f"{broker.url}/revoke"
    assert doc["introspection_endpoint"] == f"{broker.url}/introspect"
    assert doc["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert httpx.get(f"{broker.url}/.well-known/openid-configuration").json() == doc


def test_audit_api_filters_by_subject_and_event(broker: BrokerHandle) -> None:
    broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read")
    broker.exchange(broker.mint("shop", "web"), "orders-db", scope="read")
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(),
                  params={"subject": "system:serviceaccount:shop:web", "event": "denied"})
    records = r.json()["records"]
    assert records and all(x["subject"] == "system:serviceaccount:shop:web" and x["event"] == "denied"
                           for x in records)
    assert records[-1]["details"]["reasons"] == ["no grant for this subject and audience"]
    assert records[-1]["policy_path"] == "jitmesh/authz/decision"


def test_audit_record_of_an_issuance_carries_the_decision_in_full(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read admin", ttl=30).json()
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(), params={"event": "issued",
                                                                                           "limit": 1000})
    rec = next(x for x in r.json()["records"] if x["decision_id"] == body["decision_id"])
    d = rec["details"]
    assert rec["jti"] and rec["audience"] == "orders-db"
    assert d["requested_scopes"] == ["read", "admin"] and d["granted_scopes"] == ["read"] and d["ttl"] == 30
    assert d["input"]["request"] == {"audience": "orders-db", "scopes": ["read", "admin"], "ttl_seconds": 30,
                                      "dpop": None}
    assert d["decision"]["allow"] is True


def test_audit_api_needs_an_admin_token(broker: BrokerHandle) -> None:
    r = httpx.get(f"{broker.url}/v1/admin/audit")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "lots"}, {"since": "yesterday"}, {"since": "NaN"},
                                    {"since": "1e400"}, {"since": "-1"}, {"until": "inf"}, {"event": "bogus"}])
def test_audit_api_rejects_malformed_queries_with_invalid_request(broker: BrokerHandle,
                                                                  params: dict[str, str]) -> None:
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(), params=params)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_audit_api_names_the_known_events_for_an_unknown_one(broker: BrokerHandle) -> None:
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(), params={"event": "bogus"})
    assert r.status_code == 400 and "known: issued, denied" in r.json()["error_description"]


def test_audit_api_accepts_a_duration_since(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(), params={"since": "1h"})
    assert r.status_code == 200 and body["decision_id"] in {rec["decision_id"] for rec in r.json()["records"]}


def test_audit_api_accepts_rfc3339_since(broker: BrokerHandle) -> None:
    r = httpx.get(f"{broker.url}/v1/admin/audit", headers=broker.admin_headers(),
                  params={"since": "2099-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["records"] == []


def test_broker_logs_each_decision_as_json_without_any_token(broker: BrokerHandle) -> None:
    subject_token = broker.mint("payments", "api")
    body = broker.exchange(subject_token, "orders-db", scope="read").json()
    deadline = time.monotonic() + 5
    while body["decision_id"] not in broker.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [json.loads(line) for line in broker.output().splitlines() if line.startswith("{")]
    issued = [x for x in lines if x.get("decision_id") == body["decision_id"]]
    assert issued and issued[0]["event"] == "audit.issued"
    assert body["access_token"] not in broker.output()
    assert body["access_token"].split(".")[2] not in broker.output()
    assert subject_token.split(".")[2] not in broker.output()


def test_token_command_prints_the_access_token(broker: BrokerHandle, tmp_path: Path) -> None:
    sa = tmp_path / "sa.jwt"
    sa.write_text(broker.mint("payments", "api"))
    p = run("token", "--broker-url", broker.url, "--audience", "orders-db", "--scope", "read",
            "--subject-token-file", str(sa))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().count(".") == 2


def test_token_command_json_prints_the_whole_response(broker: BrokerHandle, tmp_path: Path) -> None:
    sa = tmp_path / "sa.jwt"
    sa.write_text(broker.mint("payments", "api"))
    p = run("token", "--broker-url", broker.url, "--audience", "orders-db", "--scope", "read", "--ttl", "30",
            "--subject-token-file", str(sa), "--json")
    doc = json.loads(p.stdout)
    assert doc["expires_in"] == 30 and doc["scope"] == "read"


def test_token_command_refusal_exits_non_zero_with_the_reason(broker: BrokerHandle, tmp_path: Path) -> None:
    sa = tmp_path / "sa.jwt"
    sa.write_text(broker.mint("payments", "api"))
    p = run("token", "--broker-url", broker.url, "--audience", "billing", "--subject-token-file", str(sa))
    assert p.returncode == 1 and p.stdout == ""
    assert "access_denied" in p.stderr and "no grant for this subject and audience" in p.stderr


def test_audit_command_prints_one_json_record_a_line(broker: BrokerHandle) -> None:
    broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read")
    p = run("audit", "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file),
            "--event", "issued", "--json")
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert records and all(r["event"] == "issued" for r in records)


def test_audit_command_follow_prints_new_records(broker: BrokerHandle) -> None:
    proc = subprocess.Popen([*JITMESH, "audit", "--broker-url", broker.url, "--admin-token-file",
                             str(broker.admin_token_file), "--since", str(time.time()), "--follow",
                             "--interval", "0.2", "--follow-seconds", "4"], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    out, _ = proc.communicate(timeout=20)
    assert body["decision_id"] in out


def admin_run(broker: BrokerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return run("audit", "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file), *args)


def test_audit_command_takes_a_duration_since(broker: BrokerHandle) -> None:
    body = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    p = admin_run(broker, "--since", "1h")
    assert p.returncode == 0, p.stderr
    assert body["decision_id"] in p.stdout


def test_audit_command_refuses_an_unknown_event_listing_the_known_ones(broker: BrokerHandle) -> None:
    p = admin_run(broker, "--event", "bogus")
    assert p.returncode == 2 and p.stdout == ""
    assert "--event 'bogus' is not an audit event; known: issued, denied" in p.stderr


def test_audit_command_follow_starts_at_the_end(broker: BrokerHandle) -> None:
    old = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    time.sleep(1.1)  # the trail's times are the broker's clock; this one is the same machine's
    proc = subprocess.Popen([*JITMESH, "audit", "--broker-url", broker.url, "--admin-token-file",
                             str(broker.admin_token_file), "--follow", "--interval", "0.2", "--follow-seconds", "4"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    new = broker.exchange(broker.mint("payments", "api"), "orders-db", scope="read").json()
    out, _ = proc.communicate(timeout=20)
    assert new["decision_id"] in out and old["decision_id"] not in out


def test_audit_lines_of_admin_actions_say_which_action_ran(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/v1/admin/revocations", json={"subject": "system:serviceaccount:x:y",
                                                               "reason": "audit line test"},
                   headers=broker.admin_headers())
    assert r.status_code == 201, r.text
    p = admin_run(broker, "--event", "revoked")
    assert p.returncode == 0, p.stderr
    assert "revocation.create by " in p.stdout and "subject=system:serviceaccount:x:y" in p.stdout
    assert "ttl=None" not in admin_run(broker).stdout


def test_audit_command_without_admin_token_exits_non_zero(broker: BrokerHandle) -> None:
    p = run("audit", "--broker-url", broker.url)
    assert p.returncode == 1 and "invalid_token" in p.stderr


@pytest.mark.parametrize(("flags", "named"), [
    (["--max-ttl", "0"], "--max-ttl"),
    (["--default-ttl", "7200"], "--default-ttl"),
    (["--listen", "nowhere"], "--listen"),
    (["--opa-url", "ftp://x"], "--opa-url"),
    (["--store", "mysql://x"], "--store"),
    (["--jwks-file", "/nonexistent/jwks.json"], "--jwks-file"),
    (["--policy-path", "jitmesh/../etc"], "--policy-path"),
])
def test_broker_refuses_to_start_with_a_bad_flag_naming_it(tmp_path: Path, flags: list[str], named: str) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    base = ["--jwks-file", str(jwks)] if "--jwks-file" not in flags else []
    p = run("broker", *base, *flags)
    assert p.returncode == 2
    assert named in p.stderr


def test_broker_with_a_store_it_cannot_open_exits_with_one_clear_line(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    p = run("broker", "--jwks-file", str(jwks), "--store", "sqlite:////proc/no-such-dir/broker.db")
    assert p.returncode == 1
    assert "--store" in p.stderr and "Traceback" not in p.stderr + p.stdout
