"""What OPA says: a thin client of OPA's Data API, one pooled keep-alive connection set per
broker, short timeouts. Anything but a 200 with a JSON object is `OPAUnavailable` (the
broker answers 503 and issues nothing); reading the decision is `pdp.decision`'s job."""

from __future__ import annotations

import json
from typing import Any

import httpx


class OPAUnavailable(Exception):
    """OPA could not be reached, was too slow, or answered with something other than a
    200 JSON object."""


class OPAClient:
    def __init__(self, url: str, timeout: float = 1.0, client: httpx.AsyncClient | None = None,
                 max_connections: int = 64) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Content-Type": "application/json"},
        )

    def data_url(self, policy_path: str) -> str:
        return f"{self.url}/v1/data/{policy_path.strip('/')}"

    async def query(self, policy_path: str, input_doc: dict[str, Any]) -> dict[str, Any]:
        """OPA's whole answer to `POST /v1/data/<policy_path>`: `{"result": ...}`, or `{}`
        when the document is undefined."""
        body = json.dumps({"input": input_doc}, separators=(",", ":"))
        try:
            r = await self._client.post(self.data_url(policy_path), content=body,
                                        params={"strict-builtin-errors": "true"})
        except httpx.TimeoutException:
            raise OPAUnavailable(f"OPA at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise OPAUnavailable(f"OPA at {self.url} cannot be reached: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise OPAUnavailable(f"OPA answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            doc = r.json()
        except ValueError:
            raise OPAUnavailable("OPA answered with something that is not JSON") from None
        if not isinstance(doc, dict):
            raise OPAUnavailable("OPA answered with JSON that is not an object")
        return doc

    async def healthy(self) -> bool:
        try:
            r = await self._client.get(f"{self.url}/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def close(self) -> None:
        await self._client.aclose()
