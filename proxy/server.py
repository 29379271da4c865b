"""The proxy's I/O: parse each request, ask the gate, then forward it upstream (or answer
`/v1/check`). Bodies stream both ways, never buffered whole; the upstream is reached over a
pooled keep-alive session. docs/contract.md §7.

- Request headers: at most `max_header_bytes` (431 beyond), all of them within
  `header_timeout` of the request's first byte (a slowloris client is cut off with 408);
  a request body that stalls longer than `body_idle_timeout` is abandoned.
- Upstream: `Authorization` and `DPoP` are removed (cookies stay: they are the
  application's), as are hop-by-hop headers and every client-supplied `x-jitmesh-*`;
  the gate's `x-jitmesh-subject`, `-scope`, `-decision-id` are added. Upstream down: 502;
  no answer within `upstream_timeout`: 504; both with a body that says so.
- `/v1/check` (and `/v1/check/<path>`) answers for nginx `auth_request` (original request
  in `X-Original-Method` / `X-Original-URI`) and Envoy `ext_authz` over HTTP (original
  method, original path behind the `/v1/check` prefix): 200 with the `x-jitmesh-*` headers,
  else the gate's 401/403/503. A DPoP proof names the URL the client used: the forwarding
  proxy takes it from the Host header and the listener's scheme; `/v1/check` from
  `X-Forwarded-Host` and `X-Forwarded-Proto` when the asking proxy sends them (nginx:
  `proxy_set_header X-Forwarded-Host $http_host`), else from its Host header.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from jitmesh.forwarding import (
    BoundedHttpProtocol,
    ClientGone,
    Receive,
    Scope,
    Send,
    forwarded_headers,
    has_body,
    relay,
    request_body,
    respond,
)
from jitmesh.log import get_logger
from proxy.gate import Gate, Outcome, RequestFacts
from proxy.metrics import ProxyMetrics
from proxy.policy_input import target_problem

log = get_logger("proxy")

CHECK_PATH = "/v1/check"


class GuardedHttpProtocol(BoundedHttpProtocol):
    """Request headers bounded in size and in time (`jitmesh.forwarding`), refused in plain text."""

    def error_body(self, message: str) -> tuple[bytes, bytes]:
        return b"text/plain; charset=utf-8", message.encode()

    def on_header_timeout(self) -> None:
        log.info("proxy.header_timeout", client=self.client[0] if self.client else None)


def _text(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": "bad_gateway" if status == 502 else "gateway_timeout" if status == 504
                       else "not_found", "error_description": message}).encode()
    return status, [("content-type", "application/json")], body


_respond = respond


class ProxyApp:
    def __init__(self, gate: Gate, upstream: str | None, metrics: ProxyMetrics, upstream_timeout: float = 30.0,
                 body_idle_timeout: float = 30.0) -> None:
        self.gate = gate
        self.upstream = upstream.rstrip("/") if upstream else None
        self.metrics = metrics
        self.upstream_timeout = upstream_timeout
        self.body_idle_timeout = body_idle_timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30, force_close=False),
                timeout=aiohttp.ClientTimeout(total=None, connect=min(5.0, self.upstream_timeout),
                                              sock_read=self.upstream_timeout),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        host = next((v for k, v in headers if k == "host"), "")
        client = tuple(scope["client"]) if scope.get("client") else None
        path_only = raw_path.decode("latin-1")
        problem = target_problem(target)
        if problem is not None:
            await _respond(send, 400, [("content-type", "application/json")],
                           json.dumps({"error": "invalid_request", "error_description": problem}).encode())
            return
        if path_only == CHECK_PATH or path_only.startswith(CHECK_PATH + "/"):
            await self._check(scope, headers, target, host, client, send)
            return
        facts = RequestFacts(scope["method"], target, host, scope.get("scheme", "http"), headers,
                             client)
        outcome = await self.gate.decide(facts)
        if not outcome.allowed:
            await _respond(send, outcome.status, outcome.headers, outcome.body)
            return
        if self.upstream is None:
            await _respond(send, *_text(404, "this proxy has no --upstream; it only answers /v1/check"))
            return
        await self._forward(scope, receive, send, headers, target, outcome)

    async def _check(self, scope: Scope, headers: list[tuple[str, str]], target: str, host: str,
                     client: tuple[str, int] | None, send: Send) -> None:
        original_method = next((v for k, v in headers if k == "x-original-method"), None)
        original_uri = next((v for k, v in headers if k == "x-original-uri"), None)
        if original_uri is not None:  # nginx auth_request
            method, path = (original_method or "GET"), original_uri
        else:  # Envoy ext_authz over HTTP: the original method, the original path behind the prefix
            method, path = scope["method"], target[len(CHECK_PATH):] or "/"
            if not path.startswith("/"):
                path = "/" + path.lstrip("?")
        problem = target_problem(path)
        if problem is not None:
            await _respond(send, 400, [("content-type", "application/json")],
                           json.dumps({"error": "invalid_request", "error_description": problem}).encode())
            return
        kept = [(k, v) for k, v in headers if k not in ("x-original-method", "x-original-uri")]
        # the original request's host and scheme, as the asking proxy received them
        host = next((v for k, v in headers if k == "x-forwarded-host"), host).split(",")[0].strip()
        scheme = next((v for k, v in headers if k == "x-forwarded-proto"), scope.get("scheme", "http"))
        scheme = scheme.split(",")[0].strip().lower()
        facts = RequestFacts(method, path, host, scheme if scheme in ("http", "https") else "http", kept, client)
        outcome = await self.gate.decide(facts)
        if outcome.allowed:
            await _respond(send, 200, outcome.upstream_headers, b"")
        else:
            await _respond(send, outcome.status, outcome.headers, outcome.body)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]],
                       target: str, outcome: Outcome) -> None:
        upstream_headers = [(k, v) for k, v in forwarded_headers(headers) if not k.startswith("x-jitmesh-")]
        upstream_headers += outcome.upstream_headers
        host = next((v for k, v in headers if k == "host"), None)
        if host:
            upstream_headers.append(("Host", host))
        client = scope.get("client")
        if client:
            prior = next((v for k, v in headers if k == "x-forwarded-for"), None)
            upstream_headers = [(k, v) for k, v in upstream_headers if k != "x-forwarded-for"]
            upstream_headers.append(("x-forwarded-for", f"{prior}, {client[0]}" if prior else client[0]))
        data = request_body(receive, self.body_idle_timeout) if has_body(headers) else None
        url = self.upstream + target if self.upstream else ""
        try:
            response = await self.session().request(scope["method"], url, headers=upstream_headers, data=data,
                                                    allow_redirects=False, compress=None)
        except ClientGone as exc:
            log.info("proxy.client_gone", decision_id=outcome.decision_id, reason=str(exc))
            with contextlib.suppress(Exception):
                await _respond(send, *_text(502, f"the request was abandoned: {exc}"))
            return
        except TimeoutError:
            self.metrics.upstream_errors.labels("timeout").inc()
            log.warning("proxy.upstream_timeout", decision_id=outcome.decision_id, upstream=self.upstream)
            await _respond(send, *_text(504, f"the upstream {self.upstream} did not answer within "
                                             f"{self.upstream_timeout}s"))
            return
        except (aiohttp.ClientError, OSError) as exc:
            self.metrics.upstream_errors.labels("unreachable").inc()
            log.warning("proxy.upstream_unreachable", decision_id=outcome.decision_id, upstream=self.upstream,
                        error=type(exc).__name__)
            await _respond(send, *_text(502, f"the upstream {self.upstream} cannot be reached "
                                             f"({type(exc).__name__}); the request was authorized but not served"))
            return
        async with response:
            broken = await relay(response, send)
        if broken is not None:
            self.metrics.upstream_errors.labels("broken").inc()
            log.warning("proxy.upstream_answer_broken", decision_id=outcome.decision_id, upstream=self.upstream,
                        error=type(broken).__name__)


def metrics_app(metrics: ProxyMetrics, ready: Callable[[], tuple[bool, dict[str, Any]]]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, [("content-type", "text/plain")], b"ok\n")
        elif path == "/readyz":
            ok, detail = ready()
            await _respond(send, 200 if ok else 503, [("content-type", "application/json")],
                           json.dumps(detail).encode())
        elif path == "/metrics":
            await _respond(send, 200, [("content-type", "text/plain; version=0.0.4")], metrics.render())
        else:
            await _respond(send, *_text(404, "not found: /healthz, /readyz, /metrics"))
    return app
