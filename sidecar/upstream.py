"""Credential injection: a loopback listener per upstream audience that forwards each request
to the audience's upstream with the current token, so the application holds no credential.

- The application's own `Authorization` and `DPoP` headers are dropped, as are hop-by-hop
  headers; the sidecar sends `Authorization: Bearer <token>`, or with DPoP on
  `Authorization: DPoP <token>` and a fresh proof for this request's method and URL.
- The request's path and query are appended to the upstream URL's path. Bodies stream both
  ways; the upstream is reached over a pooled keep-alive session whose TLS is verified with
  the upstream's CA file, else the system's CAs.
- Request headers are bounded in size and in the time they may take to arrive.
- No valid token: 503. Upstream down or its TLS not trusted: 502; no answer in time: 504;
  each with a JSON body that says which.

Imported only when an upstream is configured: aiohttp is not loaded otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from yarl import URL

from jitmesh.log import get_logger
from sidecar.config import UpstreamSpec

log = get_logger("sidecar")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade"})
# The credential is the sidecar's to send; Host is the upstream's, set from its URL.
STRIPPED = frozenset({"authorization", "dpop", "host"}) | HOP_BY_HOP
MAX_HEADER_BYTES = 16384
HEADER_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 30.0


class _Token(Protocol):
    @property
    def access_token(self) -> str: ...


class TokenSource(Protocol):
    def token(self, audience: str) -> _Token | None: ...


class Prover(Protocol):
    def proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str: ...


class _HeaderTooLarge(Exception):
    pass


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request headers' size (431 beyond) and on
    the time they take to arrive (408): a stuck or oversized client cannot hold the forwarder."""

    max_header_bytes = MAX_HEADER_BYTES
    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._too_large = False
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(408, b"Request Timeout", "the request headers did not arrive in time")

    def _refuse(self, status: int, reason: bytes, message: str) -> None:
        body = json.dumps({"error": "bad_request", "error_description": message}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeaderTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, b"Request Header Fields Too Large",
                         f"the request headers exceed {self.max_header_bytes} bytes")
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


def _error(status: int, error: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    if status == 503:
        headers.append(("retry-after", "1"))
    return status, headers, json.dumps({"error": error, "error_description": message}).encode()


async def _respond(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _ClientGone(Exception):
    pass


def _tls_problem(exc: BaseException) -> str | None:
    """Why the upstream's TLS was refused, if that is what happened."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return str(exc.certificate_error.verify_message or exc.certificate_error)  # type: ignore[attr-defined]
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return str(exc)
    return None


class UpstreamForwarder:
    """The ASGI app one upstream's loopback listener runs."""

    def __init__(self, spec: UpstreamSpec, tokens: TokenSource, prover: Prover | None = None,
                 timeout: float = 30.0, body_idle_timeout: float = BODY_IDLE_TIMEOUT) -> None:
        self.spec = spec
        self.tokens = tokens
        self.prover = prover
        self.timeout = timeout
        self.body_idle_timeout = body_idle_timeout
        parts = urlsplit(spec.url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._base_query = parts.query
        self._tls = spec.tls_verify() if parts.scheme == "https" else None
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30, force_close=False,
                                               ssl=self._tls if isinstance(self._tls, ssl.SSLContext) else True),
                timeout=aiohttp.ClientTimeout(total=None, connect=min(5.0, self.timeout), sock_read=self.timeout),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def outbound_url(self, raw_path: str, query: str) -> str:
        """The upstream URL of a request: its path appended to the upstream's path, the two
        queries joined."""
        path = self._base_path + (raw_path if raw_path.startswith("/") else "/" + raw_path)
        joined = "&".join(q for q in (self._base_query, query) if q)
        return self._origin + path + ("?" + joined if joined else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        audience = self.spec.audience
        held = self.tokens.token(audience)
        if held is None:
            await _respond(send, *_error(503, "token_unavailable", f"the sidecar holds no valid token for "
                                         f"{audience!r} yet; retry shortly"))
            return
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        url = self.outbound_url(raw_path, scope.get("query_string", b"").decode("latin-1"))
        method: str = scope["method"]
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        connection_named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
        outbound = [(k, v) for k, v in headers if k not in STRIPPED and k not in connection_named]
        if self.prover is not None:
            outbound += [("Authorization", f"DPoP {held.access_token}"),
                         ("DPoP", self.prover.proof(method, url, held.access_token))]
        else:
            outbound.append(("Authorization", f"Bearer {held.access_token}"))
        has_body = any(k in ("content-length", "transfer-encoding") for k, _ in headers) and not any(
            k == "content-length" and v.strip() == "0" for k, v in headers)
        data = self._body(receive) if has_body else None
        try:
            response = await self.session().request(method, URL(url, encoded=True), headers=outbound, data=data,
                                                    allow_redirects=False, compress=None)
        except _ClientGone as exc:
            log.info("upstream.client_gone", audience=audience, reason=str(exc))
            with contextlib.suppress(Exception):
                await _respond(send, *_error(502, "bad_gateway", f"the request was abandoned: {exc}"))
            return
        except TimeoutError:
            log.warning("upstream.timeout", audience=audience, upstream=self.spec.url)
            await _respond(send, *_error(504, "gateway_timeout", f"the upstream {self.spec.url} did not answer "
                                         f"within {self.timeout:g}s"))
            return
        except (aiohttp.ClientError, OSError) as exc:
            tls = _tls_problem(exc)
            if tls is not None:
                log.warning("upstream.tls_refused", audience=audience, upstream=self.spec.url, error=tls)
                message = (f"the upstream {self.spec.url} failed TLS verification ({tls}); check "
                           "its certificate and the CA the sidecar was given")
            else:
                log.warning("upstream.unreachable", audience=audience, upstream=self.spec.url,
                            error=type(exc).__name__)
                message = f"the upstream {self.spec.url} cannot be reached ({type(exc).__name__}: {exc})"
            await _respond(send, *_error(502, "bad_gateway", message))
            return
        async with response:
            dropped = {t.strip().lower() for v in response.headers.getall("connection", []) for t in v.split(",")}
            out = [(k, v) for k, v in response.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP | dropped]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The status is sent: all that is left is to end the answer short (the server then
                # closes the connection), so the app sees it broken rather than complete.
                log.warning("upstream.answer_broken", audience=audience, upstream=self.spec.url,
                            error=type(exc).__name__)
                return
            await send({"type": "http.response.body", "body": b""})

    async def _body(self, receive: Receive) -> AsyncIterator[bytes]:
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_idle_timeout)
            except TimeoutError:
                raise _ClientGone(f"the request body stalled for {self.body_idle_timeout:g}s") from None
            if message["type"] == "http.disconnect":
                raise _ClientGone("the application went away")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
