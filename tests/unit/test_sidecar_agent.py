"""The agent against a fake broker (an in-process starlette app): exchange, files, refresh,
backoff, pending polling, expiry, revocation seam, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from sidecar.agent import Agent
from sidecar.broker import BrokerClient
from sidecar.config import AudienceSpec, SidecarConfig

Answer = tuple[int, dict[str, Any], dict[str, str]]


def fake_jwt(claims: dict[str, Any]) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'ES256', 'typ': 'at+jwt'})}.{enc(claims)}.c2ln"


def issued(ttl: float, scope: str = "read") -> Callable[[dict[str, str]], Answer]:
    def answer(form: dict[str, str]) -> Answer:
        token = fake_jwt({"aud": form["audience"], "exp": time.time() + ttl, "jti": str(uuid.uuid4())})
        return 200, {"access_token": token, "issued_token_type": TOKEN_TYPE_JWT, "token_type": "Bearer",
                     "expires_in": ttl, "scope": scope, "decision_id": "d-1"}, {"Cache-Control": "no-store"}
    return answer


def error(status: int, code: str, description: str = "", **extra: Any) -> Callable[[dict[str, str]], Answer]:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else {}
    return lambda form: (status, {"error": code, "error_description": description, **extra}, headers)


class FakeBroker:
    """`/token` answers from `script` (then `default`), `/revoke` records; `down` refuses connections."""

    def __init__(self) -> None:
        self.script: list[Callable[[dict[str, str]], Answer]] = []
        self.default: Callable[[dict[str, str]], Answer] = issued(30)
        self.forms: list[dict[str, str]] = []
        self.times: list[float] = []
        self.revoked: list[str] = []
        self.down = False
        self.latency = 0.0
        self.app = Starlette(routes=[Route("/token", self._token, methods=["POST"]),
                                     Route("/revoke", self._revoke, methods=["POST"])])

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        self.forms.append(form)
        self.times.append(time.monotonic())
        answer = self.script.pop(0) if self.script else self.default
        status, body, headers = answer(form)
        if self.latency:
            await asyncio.sleep(self.latency)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _revoke(self, request: Request) -> Response:
        self.revoked.append(dict(parse_qsl((await request.body()).decode()))["token"])
        return Response(status_code=200)

    def transport(self) -> httpx.AsyncBaseTransport:
        broker = self
        asgi = httpx.ASGITransport(app=self.app)

        class Transport(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if broker.down:
                    raise httpx.ConnectError("connection refused", request=request)
                return await asgi.handle_async_request(request)

        return Transport()


def make_config(tmp_path: Path, **overrides: Any) -> SidecarConfig:
    sa = tmp_path / "sa-token"
    if not sa.exists():
        sa.write_text("subject-token-1\n")
    config = SidecarConfig(broker_url="http://broker.test", audiences=(AudienceSpec("orders-db", ("read",)),),
                           sa_token_file=sa, token_dir=tmp_path / "tokens", ttl=60, file_mode=0o640,
                           refresh_after=(0.5, 0.5), backoff_initial=0.05, backoff_max=0.2, expiry_margin=0.1,
                           request_timeout=2.0, shutdown_timeout=1.0, reask_jitter=0.0)
    return replace(config, **overrides)


def run_agent(config: SidecarConfig, broker: FakeBroker,
              body: Callable[[Agent], Awaitable[None]], shutdown: bool = True,
              rng: random.Random | None = None) -> Agent:
    async def main() -> Agent:
        agent = Agent(config, BrokerClient(config, transport=broker.transport()), rng=rng)
        await agent.start()
        try:
            await body(agent)
        finally:
            if shutdown:
                await agent.shutdown()
        return agent

    return asyncio.run(main())


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def claims_of(path: Path) -> dict[str, Any]:
    payload = path.read_text().split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_exchange_sends_the_rfc8693_form_and_writes_the_token_file(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path)

    async def body(agent: Agent) -> None:
        await eventually(lambda: agent.token("orders-db") is not None)
        path = tmp_path / "tokens" / "orders-db"
        held = agent.token("orders-db")
        assert held is not None and path.read_text() == held.access_token
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    run_agent(config, broker, body)
    assert broker.forms[0] == {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": "subject-token-1",
                               "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-db", "scope": "read",
                               "requested_ttl": "60"}


def test_subject_token_is_reread_on_every_request(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = issued(0.4)
    config = make_config(tmp_path)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 1)
        config.sa_token_file.write_text("subject-token-rotated")
        await eventually(lambda: len(broker.forms) >= 3)

    run_agent(config, broker, body)
    assert broker.forms[0]["subject_token"] == "subject-token-1"
    assert broker.forms[-1]["subject_token"] == "subject-token-rotated"


def test_token_is_refreshed_inside_the_refresh_window(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = issued(1.1)  # usable 1.0 s after the 0.1 s margin; refresh at 50%
    config = make_config(tmp_path)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.times) >= 3)

    run_agent(config, broker, body)
    gaps = [b - a for a, b in zip(broker.times, broker.times[1:], strict=False)]
    assert all(0.4 <= g <= 1.0 for g in gaps), gaps  # 0.5 s plus scheduling, inside the 1.1 s life


def test_failure_keeps_the_valid_token_and_retries_with_growing_backoff(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.script = [issued(4)]
    broker.default = error(503, "temporarily_unavailable", "OPA unreachable")
    config = make_config(tmp_path, refresh_after=(0.1, 0.1), backoff_initial=0.05, backoff_max=0.8)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.times) >= 6)
        assert agent.token("orders-db") is not None
        assert (tmp_path / "tokens" / "orders-db").exists()

    agent = run_agent(config, broker, body)
    gaps = [b - a for a, b in zip(broker.times[1:], broker.times[2:], strict=False)]
    assert gaps[-1] > gaps[0]
    assert all(g <= 0.8 + 0.3 for g in gaps), gaps  # the ceiling, plus scheduling slack
    metrics = agent.metrics.render().decode()
    assert 'jitmesh_sidecar_refresh_failures_total{audience="orders-db",reason="temporarily_unavailable"}' in metrics


def test_retry_after_from_the_broker_is_honoured(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.script = [error(503, "temporarily_unavailable", retry_after=1)]
    broker.default = issued(30)
    config = make_config(tmp_path, backoff_initial=0.05, backoff_max=5)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.times) >= 2)

    run_agent(config, broker, body)
    assert broker.times[1] - broker.times[0] >= 0.95


def test_token_that_expires_without_renewal_is_removed(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.script = [issued(1.0)]
    broker.down = False
    config = make_config(tmp_path, refresh_after=(0.3, 0.3))
    path = tmp_path / "tokens" / "orders-db"

    async def body(agent: Agent) -> None:
        await eventually(lambda: path.exists())
        broker.down = True
        exp = claims_of(path)["exp"]
        while path.exists():
            assert time.time() < exp - 0.05, "file outlived its token"
            await asyncio.sleep(0.005)
        assert agent.token("orders-db") is None and not agent.ready()

    agent = run_agent(config, broker, body)
    metrics = agent.metrics.render().decode()
    assert 'jitmesh_sidecar_tokens_expired_total{audience="orders-db"} 1.0' in metrics
    assert 'reason="unreachable"' in metrics


def test_agent_recovers_when_the_broker_returns_after_expiry(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.script = [issued(0.5)]
    broker.default = issued(30)
    config = make_config(tmp_path, refresh_after=(0.9, 0.9))

    async def body(agent: Agent) -> None:
        await eventually(lambda: agent.ready())
        broker.down = True
        await eventually(lambda: not agent.ready())
        broker.down = False
        await eventually(lambda: agent.ready(), timeout=2)
        assert (tmp_path / "tokens" / "orders-db").exists()

    run_agent(config, broker, body)


def test_authorization_pending_is_polled_at_the_brokers_interval(tmp_path: Path) -> None:
    broker = FakeBroker()
    pending = error(400, "authorization_pending", "approval needed", access_request_id="ar-7", interval=0.3)
    broker.script = [pending, pending]
    broker.default = issued(30)
    config = make_config(tmp_path, backoff_initial=0.01, backoff_max=0.02)

    async def body(agent: Agent) -> None:
        await eventually(lambda: agent.ready())

    run_agent(config, broker, body)
    gaps = [b - a for a, b in zip(broker.times, broker.times[1:], strict=False)]
    assert len(gaps) == 2 and all(0.28 <= g <= 0.8 for g in gaps), gaps
    assert "access_request_id" not in broker.forms[0]
    assert broker.forms[1]["access_request_id"] == "ar-7"


def test_denial_is_logged_with_the_brokers_reasons_and_never_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.script = [issued(5)]
    broker.default = error(403, "access_denied", "namespace payments may not reach orders-db",
                           decision_id="d-9")
    config = make_config(tmp_path, refresh_after=(0.1, 0.1))
    tokens: list[str] = []

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 3)
        held = agent.token("orders-db")
        assert held is not None  # still valid: kept despite the denial
        tokens.append(held.access_token)

    with caplog.at_level(logging.INFO, logger="jitmesh"):
        run_agent(config, broker, body)
    denials = [r for r in caplog.records if r.getMessage() == "token.denied"]
    assert denials
    fields = denials[0].fields  # type: ignore[attr-defined]
    assert fields["reasons"] == "namespace payments may not reach orders-db"
    assert fields["decision_id"] == "d-9"
    assert all(tokens[0] not in str(getattr(r, "fields", "")) for r in caplog.records)


def test_on_revoked_removes_the_file_at_once_and_asks_again(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, backoff_initial=5, backoff_max=5)
    path = tmp_path / "tokens" / "orders-db"

    async def body(agent: Agent) -> None:
        await eventually(lambda: path.exists())
        first = path.read_text()
        agent.on_revoked("orders-db", reason="jti revoked")
        assert not path.exists() and agent.token("orders-db") is None
        await eventually(lambda: path.exists(), timeout=1)
        assert path.read_text() != first

    agent = run_agent(config, broker, body)
    assert len(broker.forms) == 2
    assert 'jitmesh_sidecar_tokens_revoked_total{audience="orders-db"} 1.0' in agent.metrics.render().decode()


class FixedUniform(random.Random):
    """uniform(a, b) answers a fixed fraction of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def test_after_a_revocation_the_new_request_waits_a_random_part_of_the_jitter(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, reask_jitter=2.0, backoff_initial=5, backoff_max=5)
    path = tmp_path / "tokens" / "orders-db"
    rng = FixedUniform(0.6)
    waited: list[float] = []

    async def body(agent: Agent) -> None:
        await eventually(lambda: path.exists())
        revoked_at = time.monotonic()
        agent.on_revoked("orders-db", reason="audience revoked")
        assert not path.exists()  # the file goes at once, whatever the jitter
        await asyncio.sleep(0.3)
        assert len(broker.forms) == 1 and not path.exists()  # not asked again yet: the hold is 1.2 s
        await eventually(lambda: path.exists(), timeout=4)
        waited.append(time.monotonic() - revoked_at)

    run_agent(config, broker, body, rng=rng)
    assert (0.0, 2.0) in rng.calls
    assert 1.2 <= waited[0] < 4 and len(broker.forms) == 2


def test_a_stop_during_the_jitter_wait_ends_at_once_without_asking(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, reask_jitter=30.0)
    path = tmp_path / "tokens" / "orders-db"

    async def body(agent: Agent) -> None:
        await eventually(lambda: path.exists())
        agent.on_revoked("orders-db")
        await asyncio.sleep(0.05)

    started = time.monotonic()
    run_agent(config, broker, body, rng=FixedUniform(1.0))
    assert time.monotonic() - started < 5 and len(broker.forms) == 1 and not path.exists()


def test_answer_in_flight_during_a_revocation_is_discarded(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.latency = 0.3
    config = make_config(tmp_path)
    path = tmp_path / "tokens" / "orders-db"

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) == 1)
        agent.on_revoked("orders-db")
        await eventually(lambda: path.exists())
        held = agent.token("orders-db")
        assert held is not None and path.read_text() == held.access_token

    run_agent(config, broker, body)
    assert len(broker.forms) == 2  # the first answer was not trusted


def test_shutdown_revokes_every_token_and_removes_the_files(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, audiences=(AudienceSpec("a"), AudienceSpec("b", ("x", "y"))))
    held: list[str] = []

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        held.extend(t.access_token for t in (agent.token("a"), agent.token("b")) if t)

    run_agent(config, broker, body)
    assert sorted(broker.revoked) == sorted(held) and len(held) == 2
    assert list((tmp_path / "tokens").iterdir()) == []


def test_shutdown_is_bounded_when_the_broker_hangs(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, shutdown_timeout=0.3)

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)

        async def hang(request: Request) -> Response:
            await asyncio.sleep(30)
            return Response()

        broker.app.router.routes[1] = Route("/revoke", hang, methods=["POST"])

    started = time.monotonic()
    run_agent(config, broker, body)
    assert time.monotonic() - started < 2
    assert not (tmp_path / "tokens" / "orders-db").exists()


def test_file_left_by_an_earlier_run_is_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "orders-db").write_text("old-token")
    (tmp_path / "tokens" / ".orders-db.abc.tmp").write_text("half")
    broker = FakeBroker()
    broker.down = True
    config = make_config(tmp_path)

    async def body(agent: Agent) -> None:
        assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == []

    run_agent(config, broker, body)


def test_unreadable_subject_token_is_a_failure_without_a_request(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path)
    config.sa_token_file.unlink()

    async def body(agent: Agent) -> None:
        await eventually(lambda: b'reason="subject_token_unreadable"' in agent.metrics.render())

    run_agent(config, broker, body)
    assert broker.forms == []


def test_token_shorter_than_the_safety_margin_is_not_served(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.default = issued(0.05)
    config = make_config(tmp_path, expiry_margin=0.1)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 2)
        assert not (tmp_path / "tokens" / "orders-db").exists()

    agent = run_agent(config, broker, body)
    assert b'reason="token_too_short"' in agent.metrics.render()


def test_audience_holding_finds_the_audience_of_a_jti(tmp_path: Path) -> None:
    broker = FakeBroker()
    config = make_config(tmp_path, audiences=(AudienceSpec("a"), AudienceSpec("b")))

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        jti_b = claims_of(tmp_path / "tokens" / "b")["jti"]
        assert agent.audience_holding(jti_b) == "b"
        assert agent.audience_holding("no-such-jti") is None
        agent.on_revoked("b")
        assert agent.audience_holding(jti_b) is None
        assert agent.token("a") is not None  # only the named audience lost its token

    run_agent(config, broker, body)


def test_on_revoked_ignores_an_unknown_audience(tmp_path: Path) -> None:
    broker = FakeBroker()

    async def body(agent: Agent) -> None:
        await eventually(agent.ready)
        agent.on_revoked("billing")
        assert agent.ready()

    run_agent(make_config(tmp_path), broker, body)
    assert len(broker.forms) == 1


def test_a_revocation_for_an_audience_that_never_had_a_token_does_not_claim_a_file_went(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    broker.default = error(403, "access_denied", "no grant")

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 1)
        agent.on_revoked("orders-db", reason="subject revoked")

    with caplog.at_level(logging.INFO, logger="jitmesh"):
        agent = run_agent(make_config(tmp_path, backoff_initial=5, backoff_max=5), broker, body)
    events = [r.getMessage() for r in caplog.records]
    assert "revocation.noted" in events and "token.revoked" not in events
    assert 'jitmesh_sidecar_tokens_revoked_total{audience="orders-db"} 1.0' not in agent.metrics.render().decode()


def test_a_database_login_is_refreshed_by_naming_it_so_the_broker_rotates_the_same_role(tmp_path: Path) -> None:
    broker = FakeBroker()
    username = "jitmesh_login_" + "cd" * 16
    broker.default = lambda form: (200, {
        "access_token": f"pw-{len(broker.forms)}", "issued_token_type": "urn:jitmesh:token-type:postgresql",
        "token_type": "N_A", "expires_in": 3, "scope": "read", "username": username, "host": "127.0.0.1",
        "port": 5432, "dbname": "orders", "sslmode": "disable"}, {})
    config = make_config(tmp_path, audiences=(AudienceSpec("orders-db", ("read",), "postgresql"),),
                         expiry_margin=0.0)

    async def body(agent: Agent) -> None:
        await eventually(lambda: len(broker.forms) >= 2)
        assert "refresh_login" not in broker.forms[0]
        assert broker.forms[1]["refresh_login"] == username

    run_agent(config, broker, body)
