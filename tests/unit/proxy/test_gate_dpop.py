"""The gate's answer when this process's DPoP replay cache is full: 503, fail closed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from jitmesh import dpop
from proxy.gate import Gate, RequestFacts
from proxy.metrics import ProxyMetrics
from proxy.verify import RequestTarget


class FullCacheVerifier:
    def __init__(self) -> None:
        self.targets: list[RequestTarget | None] = []

    async def verify(self, authorization: Sequence[str], proofs: Sequence[str] = (),
                     target: RequestTarget | None = None) -> Any:
        self.targets.append(target)
        raise dpop.ReplayCacheFull("100000 proofs remembered within the window")


def test_a_full_replay_cache_is_503_and_never_an_allow() -> None:
    verifier = FullCacheVerifier()
    gate = Gate(verifier, policy=None, stream_current=lambda: True, metrics=ProxyMetrics())  # type: ignore[arg-type]
    facts = RequestFacts("GET", "/orders/1?x=1", "orders.svc:8080", "http",
                         [("authorization", "DPoP t"), ("dpop", "p")], None)
    out = asyncio.run(gate.decide(facts))
    assert out.status == 503 and not out.allowed
    assert verifier.targets == [RequestTarget("GET", "http://orders.svc:8080/orders/1?x=1")]
