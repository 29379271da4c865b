"""The sidecar's local HTTP API (docs/contract.md §5): routes only read the agent and render."""

from __future__ import annotations

import json
import re
from typing import Protocol
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jitmesh.contract import KIND_JWT
from sidecar.agent import Agent

_NO_STORE = {"Cache-Control": "no-store"}
_MAX_DPOP_REQUEST = 8192  # bytes of a /v1/dpop request body
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 section 5.6.2: token


class Prover(Protocol):
    def proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str: ...


def _bad(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=_NO_STORE)


def htu_problem(htu: object) -> str | None:
    """Why `htu` cannot be a proof's target URI, or None: an absolute http(s) URL with a host."""
    if not isinstance(htu, str) or not htu:
        return "htu must be a non-empty string: the absolute URL the application will call"
    try:
        parts = urlsplit(htu)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        return f"htu {htu[:100]!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"htu {htu[:100]!r} is not an absolute http or https URL with a host"
    if parts.username is not None or parts.password is not None:
        return "htu must not carry user information"
    if any(c.isspace() or not 0x21 <= ord(c) <= 0x7e for c in htu):
        return f"htu {htu[:100]!r} has spaces or characters outside printable ASCII; percent-encode them"
    return None


def build_app(agent: Agent, prover: Prover | None = None) -> Starlette:
    async def dpop(request: Request) -> Response:
        """A DPoP proof for a call the application makes itself, with the token it binds."""
        if prover is None:
            return _bad("dpop_not_enabled", "this sidecar holds no DPoP key; the pod needs the annotation "
                        "jitmesh.io/dpop: \"true\"", 404)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_DPOP_REQUEST:
                return _bad("invalid_request", f"the request body exceeds {_MAX_DPOP_REQUEST} bytes", 413)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _bad("invalid_request", 'the body is not JSON; expected {"audience": ..., "htm": "GET", '
                        '"htu": "https://payments.example/api/orders"}')
        if not isinstance(doc, dict):
            return _bad("invalid_request", 'the body is not a JSON object with "audience", "htm" and "htu"')
        audience, htm, htu = doc.get("audience"), doc.get("htm"), doc.get("htu")
        if not isinstance(audience, str) or not agent.knows(audience):
            return _bad("unknown_audience", f"this sidecar holds no audience {str(audience)[:100]!r}; expected "
                        f"one of {', '.join(agent.audiences)}")
        spec = agent.config.audience(audience)
        if spec is not None and spec.kind != KIND_JWT:
            return _bad("invalid_request", f"audience {audience!r} is a database login, not a token for HTTP")
        if not isinstance(htm, str) or not _METHOD.fullmatch(htm):
            return _bad("invalid_request", f"htm {str(htm)[:40]!r} is not an HTTP method, e.g. GET or POST")
        problem = htu_problem(htu)
        if problem is not None:
            return _bad("invalid_request", problem)
        held = agent.token(audience)
        if held is None:
            return JSONResponse({"error": "token_unavailable",
                                 "error_description": f"no valid token for {audience!r} yet; retry shortly"},
                                status_code=503, headers={**_NO_STORE, "Retry-After": "1"})
        return JSONResponse({"access_token": held.access_token, "dpop": prover.proof(htm, str(htu), held.access_token),
                             "token_type": "DPoP", "expires_at": int(held.expires_at)}, headers=_NO_STORE)

    async def token(request: Request) -> Response:
        audience = request.path_params["audience"]
        if not agent.knows(audience):
            return JSONResponse({"error": "unknown_audience",
                                 "error_description": f"this sidecar holds no audience {audience!r}"},
                                status_code=404, headers=_NO_STORE)
        held = agent.token(audience)
        if held is None:
            return JSONResponse({"error": "token_unavailable",
                                 "error_description": f"no valid token for {audience!r} yet; retry shortly"},
                                status_code=503, headers={**_NO_STORE, "Retry-After": "1"})
        doc = {"access_token": held.access_token, "expires_at": int(held.expires_at),
               "token_type": "DPoP" if prover is not None else "Bearer", "scope": held.scope, "audience": audience}
        if held.login is not None:  # a database login: access_token is its password
            lg = held.login
            doc.update(token_type="N_A", username=lg.username, host=lg.host, port=lg.port, dbname=lg.dbname,
                       sslmode=lg.sslmode)
        return JSONResponse(doc, headers=_NO_STORE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        missing = agent.missing()
        if missing:
            why = agent.not_ready_because()
            # The injected startupProbe prints `message`: the kubelet puts it in the pod's events.
            message = "; ".join(f"no token for {a}: {why.get(a, 'unknown')}" for a in missing)
            return JSONResponse({"status": "not ready", "missing": missing, "reasons": why, "message": message},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/v1/token/{audience}", token, methods=["GET"]),
        Route("/v1/dpop", dpop, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
