"""The proxy's event-stream follower against a fake broker transport: revocations applied,
the served audiences named, resumption, and how long a dead stream is trusted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from proxy.broker import READ_TIMEOUT, BrokerClient, EventFollower
from proxy.revocations import RevocationSet

READY = b"retry: 1000\nid: 7\nevent: ready\ndata: {\"seq\": 7}\n\n"
REVOKED = (b'id: 8\nevent: revoked\ndata: {"seq":8,"action":"revoked","kind":"subject",'
           b'"value":"system:serviceaccount:demo:demo-app","created_at":10.0,"id":"r1"}\n\n')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follower(tmp_path: Path, handler: object, clock: Clock) -> tuple[EventFollower, RevocationSet]:
    token = tmp_path / "sa"
    token.write_text("sa-token\n")
    broker = BrokerClient("http://broker.test", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    revocations = RevocationSet()
    return EventFollower(broker, token, ["orders-api"], revocations, max_down=30.0, clock=clock), revocations


async def _run_until(f: EventFollower, done: asyncio.Event) -> None:
    task = asyncio.create_task(f.run())
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_revocation_on_the_stream_is_applied_and_the_request_names_audiences_and_resume_point(
        tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield READY
        yield REVOKED
        done.set()
        await asyncio.sleep(10)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    f, revocations = follower(tmp_path, handler, Clock())
    asyncio.run(_run_until(f, done))
    assert revocations.revoked({"sub": "system:serviceaccount:demo:demo-app", "iat": 5}, "orders-api")
    assert seen[0].url.params.get_list("audience") == ["orders-api"]
    assert seen[0].headers["authorization"] == "Bearer sa-token"
    assert seen[0].headers["last-event-id"] == "0"
    assert f.last_event_id == "8"


def test_never_connected_is_not_current(tmp_path: Path) -> None:
    f, _ = follower(tmp_path, lambda request: httpx.Response(403, json={"error": "access_denied"}), Clock())
    assert not f.current()


def test_a_stream_that_went_silent_counts_as_down_since_it_went_silent(tmp_path: Path) -> None:
    clock = Clock()
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield READY
        clock.now += READ_TIMEOUT
        done.set()
        raise httpx.ReadTimeout("silent")

    def handler(request: httpx.Request) -> httpx.Response:
        if done.is_set():
            return httpx.Response(503)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    f, _ = follower(tmp_path, handler, clock)

    async def scenario() -> None:
        task = asyncio.create_task(f.run())
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert f.current()  # silent for READ_TIMEOUT (20 s) < 30 s
    clock.now += 30.0 - READ_TIMEOUT + 1
    assert not f.current()


@pytest.mark.parametrize("status", [401, 403, 503])
def test_a_refused_stream_records_why(tmp_path: Path, status: int) -> None:
    done = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        done.set()
        return httpx.Response(status, json={"error": "no"})

    f, _ = follower(tmp_path, handler, Clock())
    asyncio.run(_run_until(f, done))
    assert f.refused is not None and f.refused.startswith(f"HTTP {status}")


RESYNC = (b'id: ab12-9\nevent: resync\ndata: {"seq":9,"epoch":"ab12","reason":"bare id","revocations":['
          b'{"kind":"subject","value":"system:serviceaccount:demo:gone","created_at":10.0,"id":"r2","lifted_at":null},'
          b'{"kind":"subject","value":"system:serviceaccount:demo:back","created_at":10.0,"id":"r3",'
          b'"lifted_at":20.0}]}\n\n')


def test_a_resync_replaces_what_the_proxy_knew_with_the_brokers_state(tmp_path: Path) -> None:
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield REVOKED
        yield RESYNC
        done.set()
        await asyncio.sleep(10)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    f, revocations = follower(tmp_path, handler, Clock())
    asyncio.run(_run_until(f, done))
    assert revocations.revoked({"sub": "system:serviceaccount:demo:gone", "iat": 50}, "orders-api")
    # lifted: tokens issued before the revocation stay refused, later ones pass
    assert revocations.revoked({"sub": "system:serviceaccount:demo:back", "iat": 5}, "orders-api")
    assert not revocations.revoked({"sub": "system:serviceaccount:demo:back", "iat": 50}, "orders-api")
    # the state before the resync is replaced, not added to
    assert not revocations.revoked({"sub": "system:serviceaccount:demo:demo-app", "iat": 5}, "orders-api")
    assert f.last_event_id == "ab12-9"


def test_the_stream_read_timeout_outlasts_the_brokers_keep_alive_with_room_to_spare() -> None:
    from pdp.revocation.events import KEEPALIVE_SECONDS

    assert READ_TIMEOUT >= KEEPALIVE_SECONDS + 5  # a keep-alive a little late must not drop the stream
    assert READ_TIMEOUT < 30.0  # a dead stream is noticed within the default --stream-max-down
