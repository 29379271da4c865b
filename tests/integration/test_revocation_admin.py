"""The admin revocation API against a real broker and OPA (docs/contract.md §2):
POST/DELETE/GET /v1/admin/revocations, refusal of new issuance, audit with the admin's
name, and the `jitmesh revoke` client."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from jitmesh.devissuer import PodRef
from tests.fixtures.broker import BrokerHandle
from tests.integration.revocation_support import (
    POLICIES,
    audit,
    introspect,
    jti_of,
    lift,
    revoke,
    revoked,
    wait_for,
)

POD = PodRef("api-1", "6a0f3c1e-1111-4222-8333-944455556666")
SUBJECT = "system:serviceaccount:payments:api"


@pytest.fixture(scope="module")
def broker(module_make_opa: Callable[..., Any], module_broker_factory: Callable[..., BrokerHandle]) -> BrokerHandle:
    return module_broker_factory(module_make_opa(POLICIES).url)


def issue(broker: BrokerHandle, namespace: str = "payments", sa: str = "api", audience: str = "orders-db",
          pod: PodRef | None = POD) -> httpx.Response:
    return broker.exchange(broker.mint(namespace, sa, pod=pod), audience, scope="read")


def token(broker: BrokerHandle, **kw: Any) -> str:
    r = issue(broker, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_revoking_a_jti_answers_201_with_the_revocation_and_its_id(broker: BrokerHandle) -> None:
    jti = jti_of(token(broker))
    r = revoke(broker, jti=jti, reason="leaked in a log")
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"] and doc["kind"] == "jti" and doc["value"] == jti and doc["reason"] == "leaked in a log"
    assert doc["active"] is True and doc["lifted_at"] is None and doc["created_at"] > 0
    assert r.headers["location"] == f"/v1/admin/revocations/{doc['id']}"


def test_a_jti_revocation_takes_the_tokens_expiry_and_audience(broker: BrokerHandle) -> None:
    t = token(broker)
    claims = jwt.decode(t, options={"verify_signature": False})
    doc = revoked(broker, jti=claims["jti"], reason="leaked")
    assert doc["expires_at"] == claims["exp"]
    events = httpx.get(f"{broker.url}/v1/admin/revocations", params={"kind": "jti", "value": claims["jti"]},
                       headers=broker.admin_headers()).json()
    assert events["revocations"][0]["expires_at"] == claims["exp"]


def test_a_revocation_of_a_jti_this_broker_never_issued_expires_with_the_longest_token(
        broker: BrokerHandle) -> None:
    before = time.time()
    doc = revoked(broker, jti="never-issued-here", reason="reported")
    assert before + 3600 - 5 <= doc["expires_at"] <= time.time() + 3600 + 5  # the broker's --max-ttl


def test_jitmesh_revoke_jti_stores_the_tokens_expiry(broker: BrokerHandle) -> None:
    t = token(broker)
    claims = jwt.decode(t, options={"verify_signature": False})
    p = subprocess.run([sys.executable, "-m", "jitmesh.cli", "revoke", "--broker-url", broker.url,
                        "--admin-token-file", str(broker.admin_token_file), "--jti", claims["jti"],
                        "--reason", "leaked", "--json"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert f'"expires_at": {claims["exp"]}' in p.stdout.replace(".0,", ",").replace(".0}", "}")


def test_a_revoked_jti_introspects_inactive_at_once(broker: BrokerHandle) -> None:
    t = token(broker)
    assert introspect(broker, t)["active"] is True
    revoked(broker, jti=jti_of(t))
    assert introspect(broker, t) == {"active": False}


@pytest.mark.parametrize("kind", ["subject", "pod_uid", "audience"])
def test_subject_pod_and_audience_revocations_refuse_new_issuance_until_lifted(broker: BrokerHandle,
                                                                              kind: str) -> None:
    ns, sa, aud, pod = f"ns-{kind.replace('_', '-')}", "web", f"aud-{kind}", PodRef("web-1", f"uid-{kind}")
    value = {"subject": f"system:serviceaccount:{ns}:{sa}", "pod_uid": pod.uid, "audience": aud}[kind]
    held = token(broker, namespace=ns, sa=sa, audience=aud, pod=pod)
    doc = revoked(broker, **{kind: value})
    refused = issue(broker, namespace=ns, sa=sa, audience=aud, pod=pod)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert doc["id"] in refused.json()["error_description"]
    assert introspect(broker, held) == {"active": False}
    r = lift(broker, doc["id"])
    assert r.status_code == 200 and r.json()["lifted_at"] is not None and r.json()["active"] is False
    assert issue(broker, namespace=ns, sa=sa, audience=aud, pod=pod).status_code == 200


def test_other_subjects_are_not_refused_by_a_subject_revocation(broker: BrokerHandle) -> None:
    revoked(broker, subject="system:serviceaccount:quarantine:bad")
    assert issue(broker, namespace="quarantine", sa="good").status_code == 200


def test_lifting_an_unknown_revocation_is_404(broker: BrokerHandle) -> None:
    r = lift(broker, "no-such-revocation")
    assert r.status_code == 404 and r.json()["error"] == "not_found" and "no-such-revocation" in r.text


def test_lifting_twice_answers_the_lifted_revocation(broker: BrokerHandle) -> None:
    doc = revoked(broker, audience="lift-twice")
    first = lift(broker, doc["id"]).json()
    again = lift(broker, doc["id"])
    assert again.status_code == 200 and again.json()["lifted_at"] == first["lifted_at"]


def test_listing_shows_active_revocations_and_filters_by_kind_and_value(broker: BrokerHandle) -> None:
    doc = revoked(broker, audience="listed-aud")
    gone = revoked(broker, audience="lifted-aud")
    lift(broker, gone["id"])
    r = httpx.get(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers(),
                  params={"kind": "audience", "value": "listed-aud"})
    assert r.status_code == 200 and [x["id"] for x in r.json()["revocations"]] == [doc["id"]]
    every = httpx.get(f"{broker.url}/v1/admin/revocations", headers=broker.admin_headers()).json()["revocations"]
    ids = {x["id"] for x in every}
    assert doc["id"] in ids and gone["id"] not in ids


@pytest.mark.parametrize(("body", "content_type", "says"), [
    (b"{not json", "application/json", "not valid JSON"),
    (b"[]", "application/json", "JSON object"),
    (b'{"reason": "r"}', "application/json", "none was given"),
    (b'{"jti": "a", "subject": "system:serviceaccount:a:b", "reason": "r"}', "application/json", "jti, subject were"),
    (b'{"jti": "a", "reason": "r", "colour": "red"}', "application/json", "'colour'"),
    (b'{"jti": "a"}', "application/json", "reason is required"),
    (b'{"jti": "a", "reason": ""}', "application/json", "reason is required"),
    (b'{"jti": "", "reason": "r"}', "application/json", "jti must be a non-empty string"),
    (b'{"jti": 7, "reason": "r"}', "application/json", "jti must be a non-empty string"),
    (b'{"subject": "payments:api", "reason": "r"}', "application/json", "system:serviceaccount:<namespace>"),
    (b'{"jti": "a", "reason": "r"}', "text/plain", "application/json"),
    (b"\xff\xfe", "application/json", "not valid JSON"),
])
def test_bad_revocation_requests_get_400_naming_the_problem(broker: BrokerHandle, body: bytes, content_type: str,
                                                            says: str) -> None:
    r = httpx.post(f"{broker.url}/v1/admin/revocations", content=body,
                   headers={**broker.admin_headers(), "Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request" and says in r.json()["error_description"]


def test_an_oversized_revocation_request_is_400(broker: BrokerHandle) -> None:
    r = httpx.post(f"{broker.url}/v1/admin/revocations", json={"jti": "a", "reason": "x" * 100_000},
                   headers=broker.admin_headers())
    assert r.status_code == 400 and "larger than" in r.json()["error_description"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/admin/revocations"), ("GET", "/v1/admin/revocations"),
                                              ("DELETE", "/v1/admin/revocations/x")])
def test_revocation_api_needs_an_admin(broker: BrokerHandle, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-an-admin"},
                    {"Authorization": f"Bearer {broker.mint('payments', 'api')}"}):
        r = httpx.request(method, broker.url + path, headers=headers, json={"jti": "a", "reason": "r"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_revocations_and_lifts_are_audited_with_the_admin_who_made_them(broker: BrokerHandle) -> None:
    who = "admin-token:" + hashlib.sha256(broker.admin_token.encode()).hexdigest()[:12]
    doc = revoked(broker, subject="system:serviceaccount:audited:sa", reason="incident 42")
    lift(broker, doc["id"])
    rev = [x for x in audit(broker, event="revoked") if x["details"].get("revocation_id") == doc["id"]]
    lifted = [x for x in audit(broker, event="lifted") if x["details"].get("revocation_id") == doc["id"]]
    assert len(rev) == 1 and len(lifted) == 1
    assert rev[0]["subject"] == "system:serviceaccount:audited:sa"
    assert rev[0]["details"]["actor"] == who and rev[0]["details"]["reason"] == "incident 42"
    assert lifted[0]["details"]["actor"] == who
    assert broker.admin_token not in str(rev) + broker.output()


def test_admin_reads_are_recorded_once_a_minute_per_admin_and_endpoint_and_logged_every_time(
        make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle]) -> None:
    fresh = broker_factory(make_opa(POLICIES).url)
    held = token(fresh)
    for _ in range(3):
        introspect(fresh, held)
    reads = [x for x in audit(fresh, event="admin") if x["details"]["path"] == "/introspect"]
    assert len(reads) == 1 and reads[0]["details"]["actor"].startswith("admin-token:")
    assert reads[0]["details"]["method"] == "POST"
    assert len([x for x in audit(fresh, event="admin") if x["details"]["path"] == "/v1/admin/audit"]) == 1
    wait_for(lambda: fresh.output().count('"event":"admin.read"') >= 3, timeout=5, what="every read logged")


def jitmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jitmesh.cli", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_jitmesh_revoke_revokes_lists_and_lifts(broker: BrokerHandle) -> None:
    common = ["--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file)]
    out = jitmesh("revoke", *common, "--audience", "cli-aud", "--reason", "from the CLI", "--json")
    assert out.returncode == 0, out.stderr
    rid = __import__("json").loads(out.stdout)["id"]
    assert issue(broker, audience="cli-aud").json()["error"] == "invalid_grant"
    listed = jitmesh("revoke", *common, "--list")
    assert listed.returncode == 0 and rid in listed.stdout and "audience=cli-aud" in listed.stdout
    lifted = jitmesh("revoke", *common, "--lift", rid)
    assert lifted.returncode == 0 and "lifted by" in lifted.stdout
    assert issue(broker, audience="cli-aud").status_code == 200


@pytest.mark.parametrize(("args", "says"), [
    ([], "exactly one of --jti"),
    (["--jti", "a", "--audience", "b", "--reason", "r"], "exactly one of --jti"),
    (["--jti", "a"], "--reason is required"),
    (["--lift", "x", "--jti", "a"], "takes no target"),
])
def test_jitmesh_revoke_usage_errors_exit_2_naming_the_problem(broker: BrokerHandle, args: list[str],
                                                               says: str) -> None:
    out = jitmesh("revoke", "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file), *args)
    assert out.returncode == 2 and says in out.stderr


def test_jitmesh_revoke_reports_the_brokers_refusal(broker: BrokerHandle) -> None:
    out = jitmesh("revoke", "--broker-url", broker.url, "--admin-token-file", str(broker.admin_token_file),
                  "--subject", "payments", "--reason", "typo")
    assert out.returncode == 1 and "invalid_request" in out.stderr and "system:serviceaccount" in out.stderr
