"""A small real HTTP(S) server standing in for an upstream the sidecar forwards to: it answers
with what it received (method, path, query, the credential headers, the body's length and
SHA-256), and streams large answers. It runs on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from injector.certs import KeyPair, issue, make_ca
from jitmesh.procs import free_port


async def _echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({
        "method": request.method, "path": request.raw_path.partition("?")[0],
        "query": request.raw_path.partition("?")[2],
        "authorization": request.headers.get("Authorization"), "dpop": request.headers.get("DPoP"),
        "host": request.headers.get("Host"), "x_app": request.headers.get("X-App"),
        "body_bytes": size, "body_sha256": digest.hexdigest(),
    })


async def _big(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("bytes", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = b"x" * 65536
    sent = 0
    while sent < size:
        part = block[: min(len(block), size - sent)]
        await response.write(part)
        sent += len(part)
    await response.write_eof()
    return response


class EchoUpstream:
    """`with EchoUpstream() as up: up.url` (http), or `EchoUpstream(tls_dir=...)` for https with a
    certificate for 127.0.0.1 from a CA of its own (`ca_file`)."""

    def __init__(self, tls_dir: Path | None = None) -> None:
        self.port = free_port()
        self.ca_file: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        if tls_dir is not None:
            ca = make_ca("upstream-test-ca")
            leaf: KeyPair = issue(ca, "127.0.0.1", ips=["127.0.0.1"], dns_names=["localhost"])
            tls_dir.mkdir(parents=True, exist_ok=True)
            self.ca_file = tls_dir / "ca.crt"
            self.ca_file.write_bytes(ca.cert_pem())
            (tls_dir / "tls.crt").write_bytes(leaf.cert_pem())
            (tls_dir / "tls.key").write_bytes(leaf.key_pem())
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(tls_dir / "tls.crt", tls_dir / "tls.key")
        scheme = "https" if self._ssl else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> EchoUpstream:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("GET", "/big", _big)
        app.router.add_route("*", "/{tail:.*}", _echo)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(app), self._loop).result(10)
        return self

    async def _start(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl).start()

    def __exit__(self, *exc: Any) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
