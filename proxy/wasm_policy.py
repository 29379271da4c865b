"""The access policy evaluated in-process: OPA's Wasm build of it, fetched from the broker
(`GET /v1/access-policy/bundle`, authenticated with the proxy's ServiceAccount token) and run
on `wasmtime` through OPA's Wasm ABI (jitmesh/opa_wasm.py). No OPA beside the proxy and no
network hop per decision (docs/contract.md §7).

The bundle is re-checked with `If-None-Match` as soon as the broker announces a new one on
the event stream (`wake()`), and every `refresh` seconds in case an announcement was lost;
an unchanged one costs a 304. A failed re-check keeps the
policy in force (a policy is not revoked); a policy never loaded is `PolicyUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx

from jitmesh.log import get_logger
from jitmesh.opa_wasm import OPAWasm, WasmPolicyError, bundle_parts
from proxy.broker import BrokerClient
from proxy.policy import AccessDecision, PolicyUnavailable, read_decision

log = get_logger("proxy.policy")

BUNDLE_PATH = "/v1/access-policy/bundle"
REFRESH_SECONDS = 30.0


class WasmPolicy:
    def __init__(self, broker: BrokerClient, sa_token_file: Path, entrypoint: str,
                 refresh: float = REFRESH_SECONDS) -> None:
        self.broker = broker
        self.sa_token_file = sa_token_file
        self.entrypoint = entrypoint
        self.refresh = refresh
        self.etag: str | None = None
        self._wasm: OPAWasm | None = None
        self._woken = asyncio.Event()

    @property
    def loaded(self) -> bool:
        return self._wasm is not None

    async def load(self) -> bool:
        """Fetch the bundle if it changed; True when a policy is in force afterwards."""
        try:
            token = self.sa_token_file.read_text().strip()
        except OSError as exc:
            log.warning("policy.fetch_failed", error=f"cannot read {self.sa_token_file}: {exc.strerror}")
            return self.loaded
        headers = {"Authorization": f"Bearer {token}"}
        if self.etag and self._wasm is not None:
            headers["If-None-Match"] = self.etag
        try:
            r = await self.broker.http.get(self.broker.url + BUNDLE_PATH, params={"entrypoint": self.entrypoint},
                                           headers=headers)
        except httpx.HTTPError as exc:
            log.warning("policy.fetch_failed", error=f"the broker cannot be reached: {type(exc).__name__}")
            return self.loaded
        if r.status_code == 304:
            return self.loaded
        if r.status_code != 200:
            log.error("policy.fetch_failed", status=r.status_code, error=r.text[:600])
            return self.loaded
        try:
            wasm, data = bundle_parts(r.content)
            policy = await asyncio.to_thread(OPAWasm, wasm, data, self.entrypoint)
        except (ValueError, WasmPolicyError) as exc:
            log.error("policy.load_failed", error=str(exc))
            return self.loaded
        self._wasm, self.etag = policy, r.headers.get("etag")
        log.info("policy.loaded", entrypoint=self.entrypoint, etag=self.etag, bytes=len(r.content))
        return True

    def wake(self) -> None:
        """Re-check the bundle now: the broker announced a new one."""
        self._woken.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.refresh)
            self._woken.clear()
            await self.load()

    async def evaluate(self, input_doc: dict[str, Any]) -> AccessDecision:
        if self._wasm is None:
            raise PolicyUnavailable("the access policy has not been fetched from the broker yet")
        try:
            result = self._wasm.evaluate(input_doc)
        except WasmPolicyError as exc:
            return AccessDecision(False, [f"policy error: {exc}"], policy_error=True)
        return read_decision({} if result is None else {"result": result})

    async def close(self) -> None:
        self._wasm = None

