"""What the access proxy and the sidecar's credential injection share when they forward HTTP:
a uvicorn protocol that bounds request headers, the streamed request body, the filtering of
hop-by-hop headers, and the streamed relay of the upstream's answer.

Imported only by processes that forward: it loads aiohttp and httptools.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import aiohttp
import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade"})
# The forwarder sends its own credential, and Host is the upstream's business.
STRIPPED = frozenset({"authorization", "dpop", "host"}) | HOP_BY_HOP
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}

# httptools reports a callback's exception as a parser error: uvicorn then calls send_400_response
assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)


class HeaderTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client stopped sending the request body, or went away."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request headers' size (431 beyond) and on
    the time they take to arrive from the request's first byte (408): a slow or oversized
    client cannot hold a connection. Subclasses choose the bounds and the error body."""

    max_header_bytes = 16384
    header_timeout = 10.0

    def error_body(self, message: str) -> tuple[bytes, bytes]:
        """The content type and body of a 408 or 431."""
        return b"application/json", json.dumps({"error": "bad_request", "error_description": message}).encode()

    def on_header_timeout(self) -> None:
        """Called before a 408 is sent; for logging."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._too_large = False
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
            self.on_header_timeout()
            self._refuse(408, "the request headers did not arrive in time")

    def _refuse(self, status: int, message: str) -> None:
        content_type, body = self.error_body(message)
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, _REASONS[status], content_type, len(body), body))
        self.transport.close()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            raise HeaderTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, f"the request headers exceed {self.max_header_bytes} bytes")
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


def forwarded_headers(headers: Sequence[tuple[str, str]], stripped: frozenset[str] = STRIPPED) -> list[tuple[str, str]]:
    """The request headers that go upstream: neither in `stripped` nor named by `Connection`."""
    named = {t.strip().lower() for k, v in headers if k == "connection" for t in v.split(",")}
    return [(k, v) for k, v in headers if k not in stripped and k not in named]


def has_body(headers: Sequence[tuple[str, str]]) -> bool:
    return any(k in ("content-length", "transfer-encoding") for k, _ in headers) and not any(
        k == "content-length" and v.strip() == "0" for k, v in headers)


async def request_body(receive: Receive, idle_timeout: float, who: str = "the client") -> AsyncIterator[bytes]:
    """The request body as it arrives; `ClientGone` when it stalls past `idle_timeout` or the
    client disconnects."""
    while True:
        try:
            message = await asyncio.wait_for(receive(), idle_timeout)
        except TimeoutError:
            raise ClientGone(f"the request body stalled for {idle_timeout:g}s") from None
        if message["type"] == "http.disconnect":
            raise ClientGone(f"{who} went away")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def respond(send: Send, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def relay(response: aiohttp.ClientResponse, send: Send) -> Exception | None:
    """Stream the upstream's answer without its hop-by-hop headers. Once the status is sent, a
    broken upstream can only end the answer short (the server then closes the connection, so the
    client sees it broken rather than complete): that error is returned, for the log."""
    dropped = {t.strip().lower() for v in response.headers.getall("connection", []) for t in v.split(",")}
    out = [(k, v) for k, v in response.raw_headers if k.decode("latin-1").lower() not in HOP_BY_HOP | dropped]
    await send({"type": "http.response.start", "status": response.status, "headers": out})
    try:
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return exc
    await send({"type": "http.response.body", "body": b""})
    return None
