"""The broker's HTTP server: uvicorn with bounds on what a client may hold open.

A request's headers and body must arrive within `--request-read-timeout` seconds (from its
first byte, or from the connection's start); otherwise the broker answers 408 and closes
the connection. An idle keep-alive connection is closed after a few seconds, and beyond
`--max-connections` open connections new requests are answered 503. The event stream's
long responses are not affected: the deadline covers reading the request, not answering it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jitmesh.log import get_logger
from pdp.config import BrokerConfig

log = get_logger("pdp")

KEEP_ALIVE_SECONDS = 5
MAX_INCOMPLETE_EVENT_BYTES = 16 * 1024  # request line and headers (the h11 parser's bound)
_TIMEOUT_BODY = (b'{"error":"invalid_request","error_description":"the request was not sent in time; '
                 b'send its headers and body promptly"}')
REQUEST_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                            b"connection: close\r\ncontent-length: " + str(len(_TIMEOUT_BODY)).encode() +
                            b"\r\n\r\n" + _TIMEOUT_BODY)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request."""

    read_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._reading = False

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = True
        self._arm()

    def on_message_complete(self) -> None:
        self._reading = False
        self._disarm()
        super().on_message_complete()

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if not self._reading and cycle is not None:
            return  # between requests: the keep-alive timeout's business
        log.info("request.read_timeout", client=self.client[0] if self.client else None,
                 timeout=self.read_timeout, headers_read=cycle is not None and self._reading)
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_with_deadline(seconds: float) -> type[DeadlineHttpToolsProtocol]:
    return type("DeadlineHttpTools", (DeadlineHttpToolsProtocol,), {"read_timeout": seconds})


def uvicorn_config(app: Any, config: BrokerConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=config.listen_host, port=config.listen_port, loop="uvloop",
        http=protocol_with_deadline(config.request_read_timeout),
        lifespan="on", access_log=False, log_config=None, server_header=False, timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES,
        limit_concurrency=config.max_connections,
        ssl_certfile=str(config.tls_cert_file) if config.tls_cert_file else None,
        ssl_keyfile=str(config.tls_key_file) if config.tls_key_file else None,
    )
