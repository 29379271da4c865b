"""The access decision: reading it (pure) and asking OPA's REST Data API for it.

Anything but `{"allow": true, ...}` denies (docs/contract.md §7). An undefined or malformed
decision, or OPA answering that evaluation failed, is a deny marked as a policy error (403,
audited as such); OPA that cannot be reached or is too slow is `PolicyUnavailable` (503).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp


class PolicyUnavailable(Exception):
    pass


@dataclass(frozen=True)
class AccessDecision:
    allow: bool
    reasons: list[str] = field(default_factory=list)
    policy_error: bool = False


def read_decision(answer: Any) -> AccessDecision:
    """The decision in OPA's answer `{"result": ...}` (absent result: undefined)."""
    if not isinstance(answer, dict) or "result" not in answer:
        return AccessDecision(False, ["policy error: the access decision is undefined"], policy_error=True)
    result = answer["result"]
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
        return AccessDecision(False, ["policy error: the access decision is not an object with a boolean allow"],
                              policy_error=True)
    raw = result.get("reasons", [])
    reasons = [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
    if result["allow"] is True:
        return AccessDecision(True, reasons)
    return AccessDecision(False, reasons or ["denied by the access policy (it gave no reason)"])


class Policy(Protocol):
    async def evaluate(self, input_doc: dict[str, Any]) -> AccessDecision: ...

    async def close(self) -> None: ...


class RestPolicy:
    """`POST <opa-url>/v1/data/<policy-path>` over a pooled keep-alive session."""

    def __init__(self, opa_url: str, policy_path: str, timeout: float = 1.0) -> None:
        self.url = f"{opa_url.rstrip('/')}/v1/data/{policy_path.strip('/')}?strict-builtin-errors=true"
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 0.5))
        self._session: aiohttp.ClientSession | None = None

    async def evaluate(self, input_doc: dict[str, Any]) -> AccessDecision:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=self.timeout,
                                                  skip_auto_headers=("User-Agent",))
        body = json.dumps({"input": input_doc}).encode()
        try:
            async with self._session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as r:
                raw, status = await r.read(), r.status
        except TimeoutError:
            raise PolicyUnavailable(f"OPA did not answer within {self.timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise PolicyUnavailable(f"OPA cannot be reached: {type(exc).__name__}") from None
        if status >= 500 and b"internal_error" not in raw:
            raise PolicyUnavailable(f"OPA answered HTTP {status}")
        if status != 200:
            detail = raw[:200].decode(errors="replace")
            return AccessDecision(False, [f"policy error: OPA answered HTTP {status}: {detail}"], policy_error=True)
        try:
            return read_decision(json.loads(raw))
        except ValueError:
            return AccessDecision(False, ["policy error: OPA answered with something that is not JSON"],
                                  policy_error=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
