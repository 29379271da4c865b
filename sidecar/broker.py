"""The broker as the sidecar sees it: RFC 8693 token exchange at `/token` and RFC 7009
revocation at `/revoke` (docs/contract.md §2). Every answer becomes one of three outcomes."""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from jitmesh import __version__
from jitmesh.contract import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    KIND_POSTGRESQL,
    POSTGRESQL_LOGIN_PREFIX,
    TOKEN_TYPE_JWT,
    TOKEN_TYPE_POSTGRESQL,
)
from sidecar.config import AudienceSpec, SidecarConfig

# OAuth error codes kept as metric labels; anything else is labelled by HTTP status.
_KNOWN_ERRORS = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                           "unsupported_grant_type", "invalid_scope", "invalid_target", "access_denied",
                           "server_error", "temporarily_unavailable"})
# A JWT `exp` is whole seconds; without one, allow for the broker rounding down.
_NO_EXP_SLACK = 1.0


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_at: float  # Unix time after which the token must not be served
    scope: str
    jti: str | None
    decision_id: str | None
    login: DatabaseLogin | None = None  # a database login: access_token is its password


@dataclass(frozen=True)
class DatabaseLogin:
    """Where and as whom a brokered PostgreSQL login connects (docs/contract.md §9)."""

    username: str
    host: str
    port: int
    dbname: str
    sslmode: str


@dataclass(frozen=True)
class Pending:
    """`authorization_pending` or `slow_down` (RFC 8628): ask again after the interval."""

    interval: object
    access_request_id: str | None
    slow_down: bool
    description: str


@dataclass(frozen=True)
class Failed:
    reason: str  # the OAuth error code, or unreachable / timeout / bad_response / http_<status>
    description: str
    status: int | None = None
    retry_after: float | None = None
    decision_id: str | None = None


Outcome = Issued | Pending | Failed


class RevokeFailed(RuntimeError):
    pass


class Prover(Protocol):
    """Signs a DPoP proof (RFC 9449) for one request with the sidecar's key."""

    def proof(self, htm: str, htu: str, access_token: str | None = None, nonce: str | None = None) -> str: ...


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: only to learn its own `exp` and `jti`. The sidecar
    trusts the broker it reached over its configured URL; the resource servers verify."""
    try:
        payload = token.split(".")[1]
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return doc if isinstance(doc, dict) else {}


class BrokerClient:
    def __init__(self, config: SidecarConfig, transport: httpx.AsyncBaseTransport | None = None,
                 prover: Prover | None = None) -> None:
        self._config = config
        self._prover = prover  # with a key, every exchange carries a fresh proof: the token is bound to it
        self._http = httpx.AsyncClient(
            timeout=config.request_timeout, verify=config.tls_verify(), transport=transport,
            headers={"User-Agent": f"jitmesh-sidecar/{__version__}", "Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def exchange(self, spec: AudienceSpec, subject_token: str,
                       access_request_id: str | None = None, refresh_login: str | None = None) -> Outcome:
        form = {
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": TOKEN_TYPE_JWT,
            "audience": spec.audience,
        }
        if spec.scopes:
            form["scope"] = spec.scope
        if self._config.ttl is not None:
            form["requested_ttl"] = str(self._config.ttl)
        if access_request_id:
            form["access_request_id"] = access_request_id
        if spec.kind == KIND_POSTGRESQL:
            form["requested_token_type"] = TOKEN_TYPE_POSTGRESQL
            if refresh_login:  # the same login, rotated and extended: open sessions go on
                form["refresh_login"] = refresh_login
        sent_at = time.time()
        try:
            resp = await self._http.post(self._config.token_endpoint, data=form, headers=self._proof_header())
            nonce = resp.headers.get("DPoP-Nonce")
            if self._prover is not None and resp.status_code == 400 and nonce and \
                    _body(resp).get("error") == "use_dpop_nonce":  # RFC 9449 section 8: once more, with it
                resp = await self._http.post(self._config.token_endpoint, data=form,
                                             headers=self._proof_header(nonce))
        except httpx.TimeoutException as exc:
            return Failed("timeout", f"{type(exc).__name__} after {self._config.request_timeout:g}s")
        except httpx.HTTPError as exc:
            return Failed("unreachable", f"{type(exc).__name__}: {exc}")
        return _outcome(resp, sent_at, dpop=self._prover is not None)

    def _proof_header(self, nonce: str | None = None) -> dict[str, str]:
        if self._prover is None:
            return {}
        return {"DPoP": self._prover.proof("POST", self._config.token_endpoint, nonce=nonce)}

    async def revoke(self, token: str, login: DatabaseLogin | None = None) -> None:
        """RFC 7009; a database login is its password, named by its username."""
        data = {"token": token, "token_type_hint": "access_token"}
        if login is not None:
            data.update(token_type_hint=TOKEN_TYPE_POSTGRESQL, username=login.username)
        try:
            resp = await self._http.post(self._config.revocation_endpoint, data=data)
        except httpx.HTTPError as exc:
            raise RevokeFailed(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise RevokeFailed(f"HTTP {resp.status_code}: {_body(resp).get('error', '')}")


def _body(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After", "")
    return float(raw) if raw.strip().isdigit() else None


def _outcome(resp: httpx.Response, sent_at: float, dpop: bool = False) -> Outcome:
    body = _body(resp)
    if resp.status_code == 200:
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if (not isinstance(token, str) or not token or isinstance(expires_in, bool)
                or not isinstance(expires_in, (int, float)) or expires_in <= 0):
            return Failed("bad_response", "200 without access_token and a positive expires_in", 200)
        if body.get("issued_token_type") == TOKEN_TYPE_POSTGRESQL:
            return _login_outcome(body, token, sent_at + float(expires_in) - _NO_EXP_SLACK)
        token_type = str(body.get("token_type", "Bearer")).lower()
        if dpop and token_type != "dpop":  # asked with a proof; a token not bound to the key is refused
            return Failed("bad_response", f"asked for a DPoP-bound token but got token_type "
                          f"{body.get('token_type')!r}; the broker does not bind tokens to the sidecar's key", 200)
        if not dpop and token_type != "bearer":
            return Failed("bad_response", f"unexpected token_type {body.get('token_type')!r}", 200)
        claims = jwt_claims(token)
        # The broker counted expires_in from some moment after we sent; the JWT's exp is exact.
        expires_at = sent_at + float(expires_in)
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            expires_at = min(expires_at, float(exp))
        else:
            expires_at -= _NO_EXP_SLACK
        jti = claims.get("jti")
        decision_id = body.get("decision_id")
        return Issued(token, expires_at, str(body.get("scope") or ""), jti if isinstance(jti, str) else None,
                      decision_id if isinstance(decision_id, str) else None)
    error = body.get("error")
    description = str(body.get("error_description") or "")
    decision = body.get("decision_id")
    decision_id = decision if isinstance(decision, str) else None
    if error in ("authorization_pending", "slow_down"):
        request_id = body.get("access_request_id")
        return Pending(body.get("interval"), request_id if isinstance(request_id, str) else None,
                       error == "slow_down", description)
    reason = error if error in _KNOWN_ERRORS else f"http_{resp.status_code}"
    return Failed(reason, description or f"HTTP {resp.status_code}", resp.status_code,
                  _retry_after(resp), decision_id)


def _login_outcome(body: dict[str, Any], password: str, expires_at: float) -> Outcome:
    username, host, port, dbname = body.get("username"), body.get("host"), body.get("port"), body.get("dbname")
    if (not isinstance(username, str) or not username or not isinstance(host, str) or not host
            or isinstance(port, bool) or not isinstance(port, int) or not isinstance(dbname, str) or not dbname):
        return Failed("bad_response", "a database login without username, host, port and dbname", 200)
    sslmode = body.get("sslmode")
    login = DatabaseLogin(username, host, port, dbname, sslmode if isinstance(sslmode, str) else "prefer")
    jti = username[len(POSTGRESQL_LOGIN_PREFIX):] if username.startswith(POSTGRESQL_LOGIN_PREFIX) else None
    decision_id = body.get("decision_id")
    return Issued(password, expires_at, str(body.get("scope") or ""), jti,
                  decision_id if isinstance(decision_id, str) else None, login)
