"""What OPA says: a thin client of OPA's Data API, one pool of keep-alive connections per
client, short timeouts. Anything but a 200 with a JSON object is `OPAUnavailable` (the
broker answers 503 and issues nothing); reading the decision is `pdp.decision`'s job.

This is the one call on every issuance, so it is a small HTTP/1.1 client of its own: an
asyncio protocol per connection, httptools (uvicorn's parser) to read the answer, and the
request written in one piece. Measured on this project's 2-core machine against a real OPA
at 32 concurrent requests: httpx.AsyncClient managed ~40-70 queries/s, aiohttp ~1,700,
and aiohttp's request machinery was still a quarter of the broker's event-loop CPU per
issuance; this client spends a few microseconds of Python per query.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson


class OPAUnavailable(Exception):
    """OPA could not be reached, was too slow, or answered with something other than a
    200 JSON object."""


class _Disconnected(Exception):
    """The connection closed before a whole answer arrived."""

    def __init__(self, answered: bool) -> None:
        super().__init__("OPA closed the connection before it answered")
        self.answered = answered  # some of the answer had arrived: the request reached OPA


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.status = 0
        self.received = False
        self.closed = False
        self.reusable = False
        self.used = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(OPAUnavailable(f"OPA answered with something that is not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Disconnected(self.received))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        self.reusable = self.parser.should_keep_alive()
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, body))

    # use
    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = waiter = self.loop.create_future()
        self.received = False
        self.reusable = False
        self.used = True
        self.transport.write(request)
        return waiter

    def expire(self) -> None:
        """The deadline passed with no whole answer: fail the request, drop the connection."""
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class OPAClient:
    def __init__(self, url: str, timeout: float = 1.0, max_connections: int = 32) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OPA URL {url!r}: expected an http:// or https:// URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rpartition("@")[2]
        self._head_tail = f" HTTP/1.1\r\nHost: {host_header}\r\n".encode("latin-1")
        self.timeout = timeout
        self.connect_timeout = min(timeout, 0.5)
        self.max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._targets: dict[str, bytes] = {}

    def data_url(self, policy_path: str) -> str:
        return f"{self.url}/v1/data/{policy_path.strip('/')}?strict-builtin-errors=true"

    def _target(self, policy_path: str) -> bytes:
        """`POST <path> HTTP/1.1`, Host and Content-Type: the fixed head of a query."""
        head = self._targets.get(policy_path)
        if head is None:
            target = f"{self._prefix}/v1/data/{policy_path.strip('/')}?strict-builtin-errors=true"
            head = (b"POST " + target.encode() + self._head_tail
                    + b"Content-Type: application/json\r\nContent-Length: ")
            if len(self._targets) < 64:
                self._targets[policy_path] = head
        return head

    # the pool

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop: the old connections are unusable
            self._idle.clear()
            self._open.clear()
            self._slot_waiters.clear()
            self._loop = loop
        return loop

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._open.add(conn := _Connection(loop))
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout)):
                await loop.create_connection(lambda: conn, self._host, self._port, ssl=self._ssl,
                                             server_hostname=self._host if self._ssl else None)
        except BaseException:
            self._release(conn, keep=False)
            raise
        return conn

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed:
                return conn
            self._open.discard(conn)
        while len(self._open) >= self.max_connections:
            slot = loop.create_future()
            self._slot_waiters.append(slot)
            try:
                async with asyncio.timeout_at(deadline):
                    await slot
            except BaseException:
                if slot.done() and not slot.cancelled():
                    self._wake_one()  # the slot we were handed goes to the next in line
                else:
                    slot.cancel()
                raise
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._open.discard(conn)
        return await self._connect(loop, deadline)

    def _release(self, conn: _Connection, keep: bool) -> None:
        if keep and conn.reusable and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
            self._open.discard(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            slot = self._slot_waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    async def _exchange(self, loop: asyncio.AbstractEventLoop, request: bytes, deadline: float) -> tuple[int, bytes]:
        """Send one request and read its answer by `deadline` (TimeoutError); a kept-alive
        connection that turns out to have been closed by OPA before it answered is replaced
        once. The wait for the answer is bounded by a timer on the connection rather than
        `asyncio.timeout`, whose bookkeeping cost more than the rest of the call."""
        for attempt in (0, 1):
            conn = await self._acquire(loop, deadline)
            reused = conn.used
            keep = False
            waiter = conn.send(request)
            expiry = loop.call_at(deadline, conn.expire)
            try:
                answer = await waiter
                keep = True
                return answer
            except _Disconnected as exc:
                if attempt == 0 and reused and not exc.answered:
                    continue
                raise
            finally:
                expiry.cancel()
                self._release(conn, keep)
        raise AssertionError("unreachable")

    async def _request(self, request: bytes) -> tuple[int, bytes]:
        loop = self._bind_loop()
        try:
            return await self._exchange(loop, request, loop.time() + self.timeout)
        except TimeoutError:
            raise OPAUnavailable(f"OPA at {self.url} did not answer within {self.timeout}s") from None
        except _Disconnected:
            raise OPAUnavailable(f"OPA at {self.url} cannot be reached: ServerDisconnectedError") from None
        except OSError as exc:
            raise OPAUnavailable(f"OPA at {self.url} cannot be reached: {type(exc).__name__}") from None

    # the API

    async def query(self, policy_path: str, input_doc: dict[str, Any]) -> dict[str, Any]:
        """OPA's whole answer to `POST /v1/data/<policy_path>`: `{"result": ...}`, or `{}`
        when the document is undefined."""
        try:
            body = orjson.dumps({"input": input_doc})
        except TypeError as exc:
            raise OPAUnavailable(f"the policy input cannot be sent as JSON: {exc}") from None
        status, raw = await self._request(b"%b%d\r\n\r\n%b" % (self._target(policy_path), len(body), body))
        if status != 200:
            raise OPAUnavailable(f"OPA answered HTTP {status}: {raw[:300].decode(errors='replace')}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:  # what orjson refuses but JSON allows (integers beyond 64 bits)
                doc = json.loads(raw)
            except ValueError:
                raise OPAUnavailable("OPA answered with something that is not JSON") from None
        if not isinstance(doc, dict):
            raise OPAUnavailable("OPA answered with JSON that is not an object")
        return doc

    async def healthy(self) -> bool:
        request = b"GET " + f"{self._prefix}/health".encode() + self._head_tail + b"\r\n"
        try:
            status, _ = await self._request(request)
        except OPAUnavailable:
            return False
        return status == 200

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
