"""The sidecar's local HTTP API (docs/contract.md §5): routes only read the agent and render."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar.agent import Agent

_NO_STORE = {"Cache-Control": "no-store"}


def build_app(agent: Agent) -> Starlette:
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
               "token_type": "Bearer", "scope": held.scope, "audience": audience}
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
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
