"""The bounded pool every API-server call runs on: a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pdp.attestation.kube import ApiServerBusy, ApiServerCalls


def test_calls_past_the_bound_are_refused_at_once_and_the_bound_frees_as_calls_end() -> None:
    calls = ApiServerCalls(workers=1, max_pending=2)
    release = threading.Event()

    async def scenario() -> None:
        waiting = [asyncio.ensure_future(calls.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ApiServerBusy):
            await calls.run(lambda: None)
        release.set()
        assert await asyncio.gather(*waiting) == [True, True]
        await asyncio.sleep(0.05)
        assert calls.pending == 0
        assert await calls.run(lambda: "answered") == "answered"

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        calls.close()
