"""OAuth error answers (RFC 6749 section 5.2 shape): the error type every handler raises,
and the wrapper that turns it, a store failure or anything unexpected into JSON, never a
500 or a traceback."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jitmesh.log import get_logger
from pdp.store.base import StoreError

log = get_logger("pdp")

RETRY_AFTER_SECONDS = 2
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class OAuthError(Exception):
    status: int
    error: str
    description: str
    decision_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    retry_after: int | None = None
    challenge: str = 'Bearer realm="jitmesh"'  # WWW-Authenticate of a 401

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.decision_id is not None:
            doc["decision_id"] = self.decision_id
        doc.update(self.extra)
        return doc


def invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


def unavailable(description: str, decision_id: str | None = None) -> OAuthError:
    return OAuthError(503, "temporarily_unavailable", description, decision_id, retry_after=RETRY_AFTER_SECONDS)


def oauth_response(status: int, doc: dict[str, Any], retry_after: int | None = None,
                   challenge: str = 'Bearer realm="jitmesh"') -> JSONResponse:
    headers = dict(NO_STORE)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = challenge
    return JSONResponse(doc, status_code=status, headers=headers)


def error_response(err: OAuthError) -> JSONResponse:
    return oauth_response(err.status, err.body(), err.retry_after, err.challenge)


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, a method the route does not take) as JSON, like
    every other error of the broker."""
    status = getattr(exc, "status_code", 500)
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 404:
        description = f"no endpoint at {request.url.path[:200]!r}; /.well-known/oauth-authorization-server lists them"
    elif status == 405:
        description = f"{request.method} is not allowed on {request.url.path[:200]!r}; allowed: " \
                      f"{headers.get('allow', headers.get('Allow', '?'))}"
    else:
        description = str(getattr(exc, "detail", "")) or "the request cannot be served"
    return JSONResponse({"error": _HTTP_ERRORS.get(status, "invalid_request"), "error_description": description},
                        status_code=status, headers=headers)


def guarded(endpoint: Endpoint) -> Endpoint:
    """`endpoint` with every failure answered as OAuth JSON: its own OAuthError as is, a
    store failure and anything unexpected as 503 (logged)."""
    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except OAuthError as err:
            return error_response(err)
        except StoreError as exc:
            log.error("store.unavailable", path=request.url.path, error=str(exc))
            return error_response(unavailable("the broker's store cannot be reached"))
        except Exception:
            log.error("request.failed", exc_info=True, path=request.url.path)
            return error_response(unavailable("the broker could not complete the request"))
    return run
