"""The broker app in-process with fakes (memory store, scripted OPA, static JWKS): the
fail-closed paths that need a broken store or an unexpected failure to show."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import DevIssuer
from pdp.app import create_app
from pdp.attestation.identity import Subject
from pdp.attestation.verify import JWKSAttestor, parse_jwks
from pdp.config import BrokerConfig
from pdp.opa import OPAClient, OPAUnavailable
from tests.fixtures.broker import MemoryStore

DEV = DevIssuer()
KEYS = parse_jwks(DEV.jwks())
ALLOW = {"result": {"allow": True, "scopes": ["read"], "ttl_seconds": 60}}


class StaticKeys:
    async def keys(self, kid: str | None) -> Any:
        return KEYS

    async def close(self) -> None:
        return None


class ExplodingAttestor:
    async def attest(self, token: str) -> Subject:
        raise RuntimeError("a bug")

    async def close(self) -> None:
        return None


class ScriptedOPA(OPAClient):
    """Answers each query with `answer(policy_path, input)`: a document, or an exception to raise."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], Any]) -> None:
        super().__init__("http://opa.test")
        self.answer = answer

    async def query(self, policy_path: str, input_doc: dict[str, Any]) -> dict[str, Any]:
        result = self.answer(policy_path, input_doc)
        if isinstance(result, Exception):
            raise result
        doc: dict[str, Any] = result
        return doc

    async def healthy(self) -> bool:
        return True


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def client_for(store: MemoryStore, answer: dict[str, Any] | None = None, attestor: Any = None) -> TestClient:
    config = BrokerConfig(issuer="http://broker.test", subject_issuer=DEV.issuer)
    opa = ScriptedOPA(lambda path, doc: ALLOW if answer is None else answer)
    app = create_app(config, store=store, opa=opa,
                     attestor=attestor or JWKSAttestor(StaticKeys(), DEV.issuer, "jitmesh"))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(store: MemoryStore) -> Iterator[TestClient]:
    with client_for(store) as c:
        yield c


def exchange(client: TestClient, **changes: str) -> httpx.Response:
    data = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": DEV.mint("payments", "api"),
            "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-db", "scope": "read"}
    data.update(changes)
    return client.post("/token", data=data)


def test_issuance_writes_the_audit_record_before_answering(client: TestClient, store: MemoryStore) -> None:
    r = exchange(client)
    assert r.status_code == 200
    (rec,) = store.audit
    assert rec.event == "issued" and rec.decision_id == r.json()["decision_id"]


def test_audit_store_failure_is_503_and_no_token(client: TestClient, store: MemoryStore) -> None:
    store.fail_audit = True
    r = exchange(client)
    assert r.status_code == 503
    assert r.json()["error"] == "temporarily_unavailable" and "access_token" not in r.json()
    assert int(r.headers["retry-after"]) > 0
    assert store.audit == []


def test_audit_store_failure_on_a_deny_is_503(store: MemoryStore) -> None:
    with client_for(store, {"result": {"allow": False, "reasons": ["no"]}}) as c:
        store.fail_audit = True
        assert exchange(c).status_code == 503


PENDING = {"result": {"allow": False, "approval_required": True, "reasons": ["needs a human"]}}


def test_approval_needed_with_the_access_request_store_failing_is_503_audited_and_no_token(
        store: MemoryStore) -> None:
    with client_for(store, PENDING) as c:
        store.fail_access = True
        r = exchange(c)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable" and "access_token" not in r.json()
    assert "access requests cannot be read or written" in r.json()["error_description"]
    assert store.audit[-1].event == "error" and store.access_requests == {}


def test_approval_needed_opens_one_access_request_and_every_poll_names_it(store: MemoryStore) -> None:
    with client_for(store, PENDING) as c:
        first = exchange(c).json()
        again = exchange(c, access_request_id=first["access_request_id"]).json()
    assert first["error"] == again["error"] == "authorization_pending"
    assert first["access_request_id"] == again["access_request_id"] and list(store.access_requests) == [
        first["access_request_id"]]
    assert [r.event for r in store.audit] == ["pending", "pending"]


def test_store_down_makes_readyz_503(client: TestClient, store: MemoryStore) -> None:
    store.fail_all = True
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["store"].startswith("error")


def test_unexpected_failure_is_503_not_500(store: MemoryStore) -> None:
    with client_for(store, attestor=ExplodingAttestor()) as c:
        r = exchange(c)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
    assert "a bug" not in r.text and "Traceback" not in r.text


def test_stale_revocation_list_is_503(client: TestClient) -> None:
    broker = client.app.state.broker  # type: ignore[attr-defined]
    broker.revocations.refreshed_at = -1e9
    r = exchange(client)
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"


def test_opa_unavailable_is_503_and_audited_as_error(store: MemoryStore) -> None:
    config = BrokerConfig(issuer="http://broker.test", subject_issuer=DEV.issuer)
    opa = ScriptedOPA(lambda path, doc: OPAUnavailable("OPA answered HTTP 500"))
    app = create_app(config, store=store, opa=opa, attestor=JWKSAttestor(StaticKeys(), DEV.issuer, "jitmesh"))
    with TestClient(app) as c:
        assert exchange(c).status_code == 503
    assert store.audit[-1].event == "error"


def test_opa_is_asked_at_the_configured_policy_path_with_the_contract_input(store: MemoryStore) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def answer(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        seen.append((path, doc))
        return ALLOW
    config = BrokerConfig(issuer="http://broker.test", subject_issuer=DEV.issuer, policy_path="a/b/decision")
    app = create_app(config, store=store, opa=ScriptedOPA(answer),
                     attestor=JWKSAttestor(StaticKeys(), DEV.issuer, "jitmesh"))
    with TestClient(app) as c:
        exchange(c)
    (path, doc), = seen
    assert path == "a/b/decision"
    assert doc["request"] == {"audience": "orders-db", "scopes": ["read"], "ttl_seconds": None,
                              "dpop": None}
    assert doc["subject"]["sub"] == "system:serviceaccount:payments:api"


def test_oversized_body_is_invalid_request(client: TestClient) -> None:
    r = client.post("/token", content=b"a=" + b"b" * 100_000,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_duplicate_grant_type_is_invalid_request(client: TestClient) -> None:
    r = client.post("/token", content=f"grant_type={GRANT_TYPE_TOKEN_EXCHANGE}&grant_type=x".encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
