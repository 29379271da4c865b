"""The local API (docs/contract.md §5) over an agent fed by a fake broker."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from sidecar.agent import Agent
from sidecar.api import build_app
from sidecar.config import AudienceSpec
from tests.unit.test_sidecar_agent import FakeBroker, error, eventually, issued, make_config, run_agent


def local(agent: Agent) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(agent)), base_url="http://sidecar")


def test_token_endpoint_serves_the_token_on_disk(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path)

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        async with local(agent) as c:
            r = await c.get("/v1/token/orders-db")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        doc = r.json()
        assert doc["access_token"] == (tmp_path / "tokens" / "orders-db").read_text()
        assert time.time() < doc["expires_at"] <= time.time() + 30

    run_agent(config, broker, body)


def test_unknown_audience_is_404(tmp_path: Path) -> None:
    async def body(agent: Agent) -> None:
        async with local(agent) as c:
            r = await c.get("/v1/token/billing")
        assert r.status_code == 404 and r.json()["error"] == "unknown_audience"

    run_agent(make_config(tmp_path), FakeBroker(), body)


def test_no_valid_token_is_503_and_not_ready(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = error(403, "access_denied", "no rule allows this")

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 1)
        async with local(agent) as c:
            token, ready, health = (await c.get("/v1/token/orders-db"), await c.get("/readyz"),
                                    await c.get("/healthz"))
        assert token.status_code == 503 and "access_token" not in token.json()
        assert ready.status_code == 503 and ready.json()["missing"] == ["orders-db"]
        assert health.status_code == 200

    run_agent(make_config(tmp_path), broker, body)


def test_ready_only_when_every_audience_has_a_token(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = lambda form: (issued(30) if form["audience"] == "a" else error(503, "temporarily_unavailable"))(
        form)
    config = make_config(tmp_path, audiences=(AudienceSpec("a"), AudienceSpec("b")))

    async def body(agent: Agent) -> None:
        await eventually(lambda: agent.token("a") is not None)
        async with local(agent) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["missing"] == ["b"]
            broker.default = issued(30)
            await eventually(agent.ready)
            assert (await c.get("/readyz")).status_code == 200

    run_agent(config, broker, body)


def test_metrics_report_refreshes_failures_and_expiry(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.script = [error(403, "access_denied", "x")]
    config = make_config(tmp_path, backoff_initial=0.01, backoff_max=0.02)

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        async with local(agent) as c:
            r = await c.get("/metrics")
        text = r.text
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'jitmesh_sidecar_refreshes_total{audience="orders-db"} 1.0' in text
        assert 'jitmesh_sidecar_refresh_failures_total{audience="orders-db",reason="access_denied"} 1.0' in text
        line = next(x for x in text.splitlines()
                    if x.startswith('jitmesh_sidecar_token_expiry_timestamp_seconds{audience="orders-db"}'))
        assert time.time() < float(line.split()[-1]) <= time.time() + 30

    run_agent(config, broker, body)


def test_not_ready_names_the_policys_reasons_for_a_denial(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = error(403, "access_denied", 'image busybox:1.36 is not pinned by digest; namespace "payments" '
                                                 "requires <image>@sha256:<digest>")

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 1)
        async with local(agent) as c:
            doc = (await c.get("/readyz")).json()
        assert doc["reasons"] == {"orders-db": 'access_denied: image busybox:1.36 is not pinned by digest; '
                                               'namespace "payments" requires <image>@sha256:<digest>'}
        assert doc["message"] == f"no token for orders-db: {doc['reasons']['orders-db']}"

    run_agent(make_config(tmp_path), broker, body)


def test_a_database_login_is_served_with_its_connection_fields(tmp_path: Path) -> None:
    broker = FakeBroker()
    username = "jitmesh_login_" + "ab" * 16
    broker.default = lambda form: (200, {
        "access_token": "pw-1", "issued_token_type": "urn:jitmesh:token-type:postgresql", "token_type": "N_A",
        "expires_in": 30, "scope": "read", "decision_id": "d-1", "username": username, "host": "127.0.0.1",
        "port": 5432, "dbname": "orders", "sslmode": "disable"}, {})
    config = make_config(tmp_path, audiences=(AudienceSpec("orders-db", ("read",), "postgresql"),))

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        async with local(agent) as c:
            doc = (await c.get("/v1/token/orders-db")).json()
        assert doc["access_token"] == "pw-1" and doc["token_type"] == "N_A"
        assert (doc["username"], doc["host"], doc["port"], doc["dbname"]) == (username, "127.0.0.1", 5432, "orders")
        assert (tmp_path / "tokens" / "orders-db").read_text() == (
            f"postgresql://{username}:pw-1@127.0.0.1:5432/orders?sslmode=disable")
        assert broker.forms[0]["requested_token_type"] == "urn:jitmesh:token-type:postgresql"

    run_agent(config, broker, body)
