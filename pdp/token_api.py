"""The OAuth endpoints: RFC 8693 token exchange at `/token`, RFC 7009 revocation by the
holder, RFC 7662 introspection for admins, RFC 8414 discovery and the JWKS. Handlers parse,
call the core (`pdp.exchange`, `pdp.tokens`, `pdp.revocation`, `pdp.audit`) and render."""

from __future__ import annotations

import contextlib
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jitmesh import dpop
from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_POSTGRESQL
from jitmesh.log import get_logger
from pdp.audit import decision_record
from pdp.dblogins.postgres import PREFIX, LoginOwner, LoginUnavailable
from pdp.exchange import MAX_BODY_BYTES, Issued, parse_form, refuse_client_credentials
from pdp.http import admin as http_admin
from pdp.http.body import read_body
from pdp.http.errors import NO_STORE, OAuthError, error_response, guarded, invalid_request, oauth_response, unavailable
from pdp.http.services import broker_of
from pdp.http.verify import verify_token
from pdp.revocation import wiring as revocation_wiring
from pdp.store.base import Revocation, StoreError

log = get_logger("pdp")


async def read_form(request: Request) -> dict[str, list[str]]:
    return parse_form(await read_body(request, MAX_BODY_BYTES), request.headers.get("content-type"))


async def require_admin(request: Request) -> None:
    await http_admin.require_admin(request, request.url.path)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None



# --- token exchange, revocation, introspection --------------------------------------------

@guarded
async def token_endpoint(request: Request) -> Response:
    broker = broker_of(request)
    started = time.perf_counter()
    try:
        try:
            params = await read_form(request)
            refuse_client_credentials(request.headers.get("authorization"), params)
        except OAuthError as err:
            broker.metrics.denied.labels(err.error).inc()
            raise
        outcome = await broker.exchange.exchange(params, client_ip(request), request.headers.getlist("dpop"))
    finally:
        broker.metrics.request_seconds.observe(time.perf_counter() - started)
    if isinstance(outcome, Issued):
        revocation_wiring.note_issued(broker, outcome.access_token)  # the pod watcher's list
        return oauth_response(200, outcome.body())
    return error_response(outcome)


@guarded
async def revoke_endpoint(request: Request) -> Response:
    """RFC 7009: the holder of a token revokes it; 200 whatever the token was."""
    broker = broker_of(request)
    params = await read_form(request)
    tokens = params.get("token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise invalid_request("exactly one token parameter is required")
    login = await held_login(request, tokens[0], params)
    claims = {**login.claims(), "exp": login.expires_at} if login else await verify_token(broker, tokens[0])
    if claims is None or broker.revocations.lookup("jti", claims["jti"]) is not None:
        if login is not None:
            await end_login(request, login)
        return Response(status_code=200, headers=NO_STORE)
    now = broker.clock()
    aud = claims.get("aud")
    revocation = Revocation(id=str(uuid.uuid4()), kind="jti", value=str(claims["jti"]), reason="revoked by holder",
                            created_at=now, created_by=str(claims["sub"]), expires_at=float(claims["exp"]),
                            audience=aud if isinstance(aud, str) else None)
    try:
        await broker.store.add_revocation(revocation)
    except StoreError as exc:
        log.error("revoke.store_failed", jti=revocation.value, error=str(exc))
        return error_response(unavailable("the revocation could not be stored; try again"))
    broker.revocations.add(revocation)
    record = decision_record(decision_id=str(uuid.uuid4()), time=now, event="revoked",
                             policy_path=broker.config.policy_path, subject=str(claims["sub"]),
                             audience=str(claims.get("aud")), jti=revocation.value,
                             extra={"revocation_id": revocation.id, "kind": "jti", "by": "holder"})
    with contextlib.suppress(StoreError):
        await broker.auditor.write(record)
    if login is not None:
        await end_login(request, login)
    return Response(status_code=200, headers=NO_STORE)


async def held_login(request: Request, password: str, params: dict[str, list[str]]) -> LoginOwner | None:
    """A database login its holder revokes: `token` its password, `username` its role, and
    `token_type_hint` the login token type. None for any other request or no such login."""
    logins = broker_of(request).exchange.logins
    if params.get("token_type_hint") != [TOKEN_TYPE_POSTGRESQL] or logins is None:
        return None
    usernames = params.get("username", [])
    if len(usernames) != 1:
        raise invalid_request(f"a {TOKEN_TYPE_POSTGRESQL} revocation needs exactly one username parameter")
    try:
        return await logins.held(usernames[0], password)
    except LoginUnavailable as exc:
        raise unavailable(f"the login cannot be looked up: {exc}") from None


async def end_login(request: Request, login: LoginOwner) -> None:
    """End a revoked login now, not at the revocation event; a failure is left to the sweep."""
    logins = broker_of(request).exchange.logins
    if logins is not None:
        await logins.end(login.audience, PREFIX + login.jti, "revoked", limited=False)


@guarded
async def introspect_endpoint(request: Request) -> Response:
    """RFC 7662 for admins: active only for this broker's unexpired, unrevoked tokens."""
    broker = broker_of(request)
    await require_admin(request)
    params = await read_form(request)
    tokens = params.get("token", [])
    if len(tokens) != 1 or not tokens[0]:
        raise invalid_request("exactly one token parameter is required")
    claims = await verify_token(broker, tokens[0])
    if claims is None or broker.revocations.token_revoked(claims) is not None:
        return oauth_response(200, {"active": False})
    doc = {"active": True, "token_type": dpop.TOKEN_TYPE_DPOP if "cnf" in claims else "Bearer"}
    doc.update({k: v for k, v in claims.items()})
    return oauth_response(200, doc)


# --- discovery and keys -----------------------------------------------------------------

async def discovery_endpoint(request: Request) -> Response:
    issuer = broker_of(request).config.issuer
    return JSONResponse({
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "dpop_signing_alg_values_supported": list(dpop.SUPPORTED_ALGS),  # RFC 9449 section 5.1
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        # Introspection takes an admin bearer token (RFC 6750), which no registered client
        # authentication method names, so introspection_endpoint_auth_methods_supported is left out.
        # RFC 8414 section 2 requires response_types_supported; with no authorization
        # endpoint, the one response type is the registered "none". No ID tokens are issued,
        # so no OpenID-only field is served.
        "response_types_supported": ["none"],
    })


async def jwks_endpoint(request: Request) -> Response:
    return JSONResponse(broker_of(request).keys.jwks(), headers={"Cache-Control": "max-age=60"})
