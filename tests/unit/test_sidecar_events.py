"""The sidecar's revocation subscriber: which tokens an event takes away, and the
subscriber against a fake broker (httpx.MockTransport) serving Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sidecar.config import AudienceSpec, SidecarConfig
from sidecar.events import Identity, RevocationSubscriber, affected, backoff, identity_of

ME = Identity("system:serviceaccount:payments:api", "pod-1")
AUDS = ["orders-db", "billing"]


def holding(jti: str) -> str | None:
    return {"jti-orders": "orders-db"}.get(jti)


@pytest.mark.parametrize(("event", "expected"), [
    ({"kind": "jti", "value": "jti-orders"}, ["orders-db"]),
    ({"kind": "jti", "value": "someone-elses"}, []),
    ({"kind": "audience", "value": "billing"}, ["billing"]),
    ({"kind": "audience", "value": "other"}, []),
    ({"kind": "subject", "value": "system:serviceaccount:payments:api"}, AUDS),
    ({"kind": "subject", "value": "system:serviceaccount:shop:web"}, []),
    ({"kind": "pod_uid", "value": "pod-1"}, AUDS),
    ({"kind": "pod_uid", "value": "pod-2"}, []),
    ({"kind": "colour", "value": "red"}, []),
    ({"kind": "jti"}, []),
    ([1, 2], []),
])
def test_an_event_takes_away_exactly_the_tokens_it_names(event: object, expected: list[str]) -> None:
    assert affected(event, AUDS, holding, ME) == expected


def test_a_pod_event_does_not_touch_a_sidecar_without_a_pod() -> None:
    assert affected({"kind": "pod_uid", "value": "pod-1"}, AUDS, holding, Identity("s", None)) == []


def jwt_with(claims: dict[str, object]) -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.sig"


def test_identity_comes_from_the_serviceaccount_tokens_claims() -> None:
    token = jwt_with({"sub": "system:serviceaccount:a:b", "kubernetes.io": {"pod": {"uid": "u-1", "name": "p"}}})
    assert identity_of(token) == Identity("system:serviceaccount:a:b", "u-1")
    assert identity_of("garbage") == Identity(None, None)
    assert identity_of(jwt_with({"sub": 5})) == Identity(None, None)


def test_backoff_grows_to_a_ceiling_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff(n, rng) for n in range(12)]
    assert delays[0] <= 0.2 and all(d <= 5.0 for d in delays) and delays[8] >= 2.5


@dataclass
class Held:
    jti: str | None
    iat: float | None = None


@dataclass
class FakeAgent:
    tokens: dict[str, Held]
    revoked: list[str] = field(default_factory=list)

    def token(self, audience: str) -> Held | None:
        return self.tokens.get(audience)

    def on_revoked(self, audience: str, reason: str = "") -> None:
        self.revoked.append(audience)
        self.tokens.pop(audience, None)


def config(tmp_path: Path) -> SidecarConfig:
    sa = tmp_path / "sa"
    sa.write_text(jwt_with({"sub": "system:serviceaccount:payments:api"}))
    return SidecarConfig(broker_url="http://broker.test",
                         audiences=(AudienceSpec("orders-db"), AudienceSpec("billing")),
                         sa_token_file=sa, token_dir=tmp_path / "tokens")


def sse(*events: tuple[int, str, dict[str, object]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {name}\ndata: {json.dumps(d)}\n\n".encode() for i, name, d in events)


def test_the_subscriber_applies_events_and_resumes_with_last_event_id(tmp_path: Path) -> None:
    seen: list[dict[str, str | None]] = []
    bodies = [sse((4, "ready", {"seq": 4}), (5, "revoked", {"kind": "jti", "value": "j-orders", "id": "r5"})),
              sse((6, "revoked", {"kind": "audience", "value": "billing", "id": "r6"}), (6, "ready", {"seq": 6}))]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"last": request.headers.get("last-event-id"), "auth": request.headers.get("authorization")})
        body = bodies[len(seen) - 1] if len(seen) <= len(bodies) else b""
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    agent = FakeAgent({"orders-db": Held("j-orders"), "billing": Held("j-billing")})

    async def run() -> None:
        sub = RevocationSubscriber(config(tmp_path), agent, transport=httpx.MockTransport(handler),
                                   rng=random.Random(0))
        task = asyncio.create_task(sub.run())
        for _ in range(200):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert agent.revoked == ["orders-db", "billing"]
    assert [s["last"] for s in seen[:3]] == [None, "5", "6"]
    assert all(str(s["auth"]).startswith("Bearer ey") for s in seen)


def test_a_refused_stream_is_retried_with_backoff(tmp_path: Path) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(asyncio.get_event_loop().time())
        return httpx.Response(401, json={"error": "invalid_token"})

    async def run() -> None:
        sub = RevocationSubscriber(config(tmp_path), FakeAgent({}), transport=httpx.MockTransport(handler),
                                   rng=random.Random(0))
        task = asyncio.create_task(sub.run())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert 2 <= len(calls) <= 6  # 0.1-0.2, 0.2-0.4, 0.4-0.8 s apart: not a hot loop


def run_stream(tmp_path: Path, agent: FakeAgent, body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async def run() -> None:
        sub = RevocationSubscriber(config(tmp_path), agent, transport=httpx.MockTransport(handler),
                                   rng=random.Random(0))
        await sub._stream_once()
        await sub.aclose()

    asyncio.run(run())


def test_a_lifted_event_drops_a_token_issued_before_the_revocation_and_keeps_a_newer_one(tmp_path: Path) -> None:
    agent = FakeAgent({"orders-db": Held("old", iat=100.0), "billing": Held("new", iat=300.0)})
    lifted = {"kind": "subject", "value": "system:serviceaccount:payments:api", "id": "r1", "created_at": 200.0,
              "lifted_at": 250.0}
    run_stream(tmp_path, agent, sse((1, "lifted", lifted)))
    assert agent.revoked == ["orders-db"]


def test_a_resync_drops_every_token_its_state_revokes(tmp_path: Path) -> None:
    agent = FakeAgent({"orders-db": Held("j-orders", iat=100.0), "billing": Held("j-billing", iat=100.0)})
    state = {"seq": 3, "epoch": "e2", "reason": "another store", "revocations": [
        {"kind": "jti", "value": "j-orders", "id": "r1", "created_at": 150.0, "lifted_at": None},
        {"kind": "subject", "value": "system:serviceaccount:shop:web", "id": "r2", "created_at": 150.0,
         "lifted_at": None},
        {"kind": "audience", "value": "billing", "id": "r3", "created_at": 50.0, "lifted_at": 60.0}]}
    run_stream(tmp_path, agent, b"id: e2-3\nevent: resync\ndata: " + json.dumps(state).encode() + b"\n\n")
    assert agent.revoked == ["orders-db"]  # billing's token came after its audience revocation was lifted


def test_an_unreadable_resync_drops_every_token(tmp_path: Path) -> None:
    agent = FakeAgent({"orders-db": Held("a"), "billing": Held("b")})
    run_stream(tmp_path, agent, b"id: e2-3\nevent: resync\ndata: {\"seq\": 3}\n\n")
    assert agent.revoked == ["orders-db", "billing"]
