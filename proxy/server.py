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

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jitmesh.log import get_logger
from proxy.gate import Gate, Outcome, RequestFacts
from proxy.metrics import ProxyMetrics
from proxy.policy_input import target_problem

log = get_logger("proxy")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CHECK_PATH = "/v1/check"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade"})
STRIPPED_UPSTREAM = frozenset({"authorization", "dpop", "host"}) | HOP_BY_HOP


class HeaderTooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on header size and on the time to send them."""

    max_header_bytes = 16384
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("proxy.header_timeout", client=self.client[0] if self.client else None)
            self._send_error(408, "the request headers did not arrive in time")

    def _send_error(self, status: int, message: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise HeaderTooLarge

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except HeaderTooLarge:  # pragma: no cover -- httptools wraps it; kept for other parsers
            self._send_error(431, f"the request headers exceed {self.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if isinstance(getattr(self, "_last_error", None), HeaderTooLarge):
            self._send_error(431, f"the request headers exceed {self.max_header_bytes} bytes")
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._guard(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._guard(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _guard(self, n: int) -> None:
        try:
            self._count(n)
        except HeaderTooLarge as exc:
            self._last_error = exc
            raise

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


# httptools reports a callback's exception as a parser error: uvicorn then calls send_400_response
assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)


def _text(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": "bad_gateway" if status == 502 else "gateway_timeout" if status == 504
                       else "not_found", "error_description": message}).encode()
    return status, [("content-type", "application/json")], body


async def _respond(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    pass


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

    async def _body(self, receive: Receive) -> AsyncIterator[bytes]:
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_idle_timeout)
            except TimeoutError:
                raise ClientGone(f"the request body stalled for {self.body_idle_timeout}s") from None
            if message["type"] == "http.disconnect":
                raise ClientGone("the client went away")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[str, str]],
                       target: str, outcome: Outcome) -> None:
        connection_named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
        upstream_headers = [(k, v) for k, v in headers if k not in STRIPPED_UPSTREAM and k not in connection_named
                            and not k.startswith("x-jitmesh-")]
        upstream_headers += outcome.upstream_headers
        host = next((v for k, v in headers if k == "host"), None)
        if host:
            upstream_headers.append(("Host", host))
        client = scope.get("client")
        if client:
            prior = next((v for k, v in headers if k == "x-forwarded-for"), None)
            upstream_headers = [(k, v) for k, v in upstream_headers if k != "x-forwarded-for"]
            upstream_headers.append(("x-forwarded-for", f"{prior}, {client[0]}" if prior else client[0]))
        has_body = any(k in ("content-length", "transfer-encoding") for k, _ in headers) and not any(
            k == "content-length" and v.strip() == "0" for k, v in headers)
        data = self._body(receive) if has_body else None
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
            dropped = {t.strip().lower() for v in response.headers.getall("connection", []) for t in v.split(",")}
            out = [(k, v) for k, v in response.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP | dropped]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


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
