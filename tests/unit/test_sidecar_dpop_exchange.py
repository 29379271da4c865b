"""The sidecar's exchange with DPoP on, against a fake broker (httpx.MockTransport): a fresh
proof on every request, the server's nonce honoured once, and an unbound answer refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from jitmesh import dpop
from sidecar.broker import BrokerClient, Failed, Issued
from sidecar.config import AudienceSpec, SidecarConfig
from sidecar.proof import ProofKey


def _config(tmp_path: Path) -> SidecarConfig:
    sa = tmp_path / "sa"
    sa.write_text("x.y.z")
    return SidecarConfig(broker_url="http://broker.test", audiences=(AudienceSpec("payments-api"),),
                         sa_token_file=sa, token_dir=tmp_path / "tokens", dpop=True)


def _exchange(tmp_path: Path, handler: httpx.MockTransport) -> object:
    async def go() -> object:
        client = BrokerClient(_config(tmp_path), transport=handler, prover=ProofKey())
        try:
            return await client.exchange(AudienceSpec("payments-api"), "subject")
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_every_exchange_carries_a_fresh_proof_for_the_token_endpoint(tmp_path: Path) -> None:
    proofs: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        proofs.append(request.headers["DPoP"])
        return httpx.Response(200, json={"access_token": "a.b.c", "expires_in": 60, "token_type": "DPoP"})

    for _ in range(2):
        assert isinstance(_exchange(tmp_path, httpx.MockTransport(handler)), Issued)
    checked = [dpop.check_proof(p, htm="POST", htu="http://broker.test/token", now=time.time(), window=60)
               for p in proofs]
    assert checked[0].jti != checked[1].jti


def test_a_nonce_the_broker_asks_for_is_sent_in_one_more_proof(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["DPoP"])
        if len(seen) == 1:
            return httpx.Response(400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": "n-1"})
        return httpx.Response(200, json={"access_token": "a.b.c", "expires_in": 60, "token_type": "DPoP"})

    assert isinstance(_exchange(tmp_path, httpx.MockTransport(handler)), Issued)
    assert len(seen) == 2
    dpop.check_proof(seen[1], htm="POST", htu="http://broker.test/token", now=time.time(), window=60, nonce="n-1")


@pytest.mark.parametrize("token_type", ["Bearer", None])
def test_an_answer_not_bound_to_the_key_is_refused(tmp_path: Path, token_type: str | None) -> None:
    body: dict[str, object] = {"access_token": "a.b.c", "expires_in": 60}
    if token_type:
        body["token_type"] = token_type
    outcome = _exchange(tmp_path, httpx.MockTransport(lambda r: httpx.Response(200, json=body)))
    assert isinstance(outcome, Failed) and outcome.reason == "bad_response" and "DPoP-bound" in outcome.description


def test_the_key_shows_only_its_thumbprint() -> None:
    key = ProofKey()
    assert repr(key) == f"ProofKey(jkt={key.jkt!r})"
    assert not hasattr(key, "__dict__")
