"""The OPA client against a scripted HTTP server on loopback: what it sends, and how each
way of answering wrongly becomes OPAUnavailable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from jitmesh.procs import free_port
from pdp.opa import OPAClient, OPAUnavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def with_server(handler: Handler, body: Callable[[OPAClient], Awaitable[Any]], timeout: float = 1.0) -> Any:
    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = OPAClient(f"http://127.0.0.1:{port}", timeout=timeout)
        try:
            return await body(client)
        finally:
            await client.close()
            await runner.cleanup()
    return asyncio.run(main())


def test_query_posts_the_input_to_the_data_api_with_strict_builtin_errors() -> None:
    seen: list[tuple[str, str, str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.query_string, await request.json()))
        return web.json_response({"result": {"allow": True}})

    doc = with_server(handler, lambda c: c.query("jitmesh/authz/decision", {"a": 1}))
    assert doc == {"result": {"allow": True}}
    assert seen == [("POST", "/v1/data/jitmesh/authz/decision", "strict-builtin-errors=true", {"input": {"a": 1}})]


def test_undefined_document_is_returned_as_is() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({})
    assert with_server(handler, lambda c: c.query("p", {})) == {}


@pytest.mark.parametrize(("status", "text"), [(500, '{"code": "internal_error"}'), (400, "{}"), (200, "not json"),
                                              (200, "[1, 2]")])
def test_wrong_answers_are_unavailable(status: int, text: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="application/json")
    with pytest.raises(OPAUnavailable):
        with_server(handler, lambda c: c.query("p", {}))


def test_slow_answer_is_unavailable_within_the_timeout() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"result": {}})

    async def timed(c: OPAClient) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OPAUnavailable, match="did not answer"):
            await c.query("p", {})
        return loop.time() - started
    assert with_server(handler, timed, timeout=0.3) < 2


def test_nothing_listening_is_unavailable() -> None:
    async def go() -> None:
        client = OPAClient(f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(OPAUnavailable, match="cannot be reached"):
                await client.query("p", {})
            assert await client.healthy() is False
        finally:
            await client.close()
    asyncio.run(go())


def test_healthy_reads_opa_health() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if request.path == "/health" else 404)
    assert with_server(handler, lambda c: c.healthy()) is True


def test_input_is_sent_as_compact_json() -> None:
    raw: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        raw.append(await request.read())
        return web.json_response({"result": {}})
    with_server(handler, lambda c: c.query("p", {"k": [1, 2]}))
    assert raw == [json.dumps({"input": {"k": [1, 2]}}, separators=(",", ":")).encode()]
