"""The sidecar opens its revocation stream before it asks for its first tokens, so a
revocation made between the first issuance and the stream's start is not missed; a stream
that cannot open does not hold the tokens back for longer than a bound."""

from __future__ import annotations

import asyncio
import time

from sidecar.service import subscribe_then_start


class RecordingAgent:
    def __init__(self, connected: asyncio.Event) -> None:
        self.connected = connected
        self.started_with_stream_open: bool | None = None

    async def start(self) -> None:
        self.started_with_stream_open = self.connected.is_set()


def test_first_tokens_wait_for_the_revocation_stream_to_open() -> None:
    async def scenario() -> tuple[bool, bool | None]:
        connected = asyncio.Event()
        agent = RecordingAgent(connected)
        asyncio.get_running_loop().call_later(0.1, connected.set)
        opened = await subscribe_then_start(agent, connected, bound=5.0)
        return opened, agent.started_with_stream_open

    assert asyncio.run(scenario()) == (True, True)


def test_a_stream_that_cannot_open_holds_the_tokens_back_only_for_the_bound() -> None:
    async def scenario() -> tuple[bool, bool | None, float]:
        connected = asyncio.Event()
        agent = RecordingAgent(connected)
        t0 = time.monotonic()
        opened = await subscribe_then_start(agent, connected, bound=0.2)
        return opened, agent.started_with_stream_open, time.monotonic() - t0

    opened, with_stream, waited = asyncio.run(scenario())
    assert (opened, with_stream) == (False, False)
    assert 0.2 <= waited < 2.0
