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

import contextlib
import json
import ssl
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from jitmesh.forwarding import (
    ClientGone,
    Receive,
    Scope,
    Send,
    forwarded_headers,
    has_body,
    relay,
    request_body,
    respond,
)
from jitmesh.log import get_logger
from sidecar.config import UpstreamSpec

log = get_logger("sidecar")

BODY_IDLE_TIMEOUT = 30.0


class _Token(Protocol):
    @property
    def access_token(self) -> str: ...


class TokenSource(Protocol):
    def token(self, audience: str) -> _Token | None: ...


class Prover(Protocol):
    def proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str: ...


def _error(status: int, error: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    if status == 503:
        headers.append(("retry-after", "1"))
    return status, headers, json.dumps({"error": error, "error_description": message}).encode()


_respond = respond


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
        outbound = forwarded_headers(headers)
        if self.prover is not None:
            outbound += [("Authorization", f"DPoP {held.access_token}"),
                         ("DPoP", self.prover.proof(method, url, held.access_token))]
        else:
            outbound.append(("Authorization", f"Bearer {held.access_token}"))
        data = request_body(receive, self.body_idle_timeout, "the application") if has_body(headers) else None
        try:
            response = await self.session().request(method, URL(url, encoded=True), headers=outbound, data=data,
                                                    allow_redirects=False, compress=None)
        except ClientGone as exc:
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
            broken = await relay(response, send)
        if broken is not None:
            log.warning("upstream.answer_broken", audience=audience, upstream=self.spec.url,
                        error=type(broken).__name__)

