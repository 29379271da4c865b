"""Token verification at the receiving side, exactly the checks of docs/contract.md §7:
ES256 with a key from the broker's `/jwks`, `typ` `at+jwt`, `iss` the broker's issuer,
`aud` one of the audiences served, `exp`/`nbf` with at most 30 s leeway, not revoked, and
for a token bound to a key (`cnf.jkt`) a DPoP proof for this request (RFC 9449 section 7).

This module signs nothing and shares nothing with the broker's signing code. Failures are
`TokenRejected` (401 with `WWW-Authenticate`, RFC 6750 §3 or RFC 9449 §7.1) or, for a
duplicated Authorization header, 400 `invalid_request`; a key set too stale to trust is
`proxy.keys.KeysUnavailable` (503), a full replay cache `jitmesh.dpop.ReplayCacheFull` (503).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt

from jitmesh import dpop
from proxy.keys import KeysUnavailable
from proxy.revocations import RevocationSet

MAX_LEEWAY_SECONDS = 30.0
ALGORITHM = "ES256"
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 10000
DPOP_PROOF_WINDOW = 60.0  # seconds a proof's iat may be old; its jti is remembered this long
BEARER, DPOP = "Bearer", dpop.TOKEN_TYPE_DPOP


class TokenRejected(Exception):
    """The request's credential is absent or unacceptable.

    `error` is the RFC 6750 error code (None when the request carried no bearer credential at
    all, which per RFC 6750 §3.1 gets a challenge without an error code)."""

    def __init__(self, description: str, error: str | None = "invalid_token", status: int = 401,
                 scheme: str = BEARER) -> None:
        super().__init__(description)
        self.description = description
        self.error = error
        self.status = status
        self.scheme = scheme  # the challenge's scheme: DPoP once a DPoP-bound token or proof is involved

    def www_authenticate(self) -> str:
        # RFC 9449 section 7.1: a DPoP challenge names the proof algorithms accepted
        algs = f', algs="{" ".join(dpop.SUPPORTED_ALGS)}"' if self.scheme == DPOP else ""
        if self.error is None:
            return f'{self.scheme} realm="jitmesh"{algs}'
        # a quoted-string of printable ASCII: the description may quote what the client sent
        safe = "".join(c if " " <= c <= "~" else "?" for c in self.description).replace("\\", "").replace('"', "'")
        return f'{self.scheme} realm="jitmesh", error="{self.error}", error_description="{safe}"{algs}'


@dataclass(frozen=True)
class VerifiedToken:
    claims: Mapping[str, Any]
    subject: str
    audience: str
    scope: str
    jti: str
    decision_id: str | None

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


@dataclass(frozen=True)
class Presented:
    """How a request presents its token: the Authorization scheme and the token."""

    scheme: str  # BEARER or DPOP
    token: str


def presented_token(authorization: Sequence[str]) -> Presented:
    """The token and scheme (`Bearer` or `DPoP`) of a request's Authorization header values."""
    if not authorization:
        raise TokenRejected("no Authorization header: send `Authorization: Bearer <token>`", error=None)
    if len(authorization) > 1:
        raise TokenRejected("more than one Authorization header; send exactly one", error="invalid_request",
                            status=400)
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    known = {BEARER.lower(): BEARER, DPOP.lower(): DPOP}.get(scheme.lower())
    if known is None:
        raise TokenRejected(f"Authorization scheme {scheme[:20]!r} is not supported; use Bearer or DPoP", error=None)
    if not token or " " in token:
        raise TokenRejected(f"the Authorization header is malformed: expected `{known} <token>`", scheme=known)
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"the token is longer than {MAX_TOKEN_BYTES} bytes", scheme=known)
    return Presented(known, token)


@dataclass(frozen=True)
class RequestTarget:
    """What a DPoP proof must name: the method and the URL the client sent the request to."""

    method: str
    url: str


KeyLookup = Callable[[str], Awaitable[Any | None]]


class TokenVerifier:
    def __init__(self, issuer: str, audiences: Collection[str], key: KeyLookup, revocations: RevocationSet,
                 leeway: float = MAX_LEEWAY_SECONDS, clock: Callable[[], float] = time.time,
                 keys_fresh: Callable[[], bool] = lambda: True) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway {leeway}: at most {MAX_LEEWAY_SECONDS} seconds")
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self._key = key
        self.revocations = revocations
        self.leeway = leeway
        self._clock = clock
        self._keys_fresh = keys_fresh
        # token -> its verified claims: the ES256 check is most of a request's cost, and its
        # outcome cannot change; expiry and revocation are checked again on every use
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()
        self.replays = dpop.ReplayCache(window=DPOP_PROOF_WINDOW)  # this process's spent proofs

    async def verify(self, authorization: Sequence[str], proofs: Sequence[str] = (),
                     target: RequestTarget | None = None) -> VerifiedToken:
        """The verified token of a request; `proofs` are its `DPoP` header values and `target`
        what they must name (a bound token without both is refused)."""
        presented = presented_token(authorization)
        token = presented.token
        if not self._keys_fresh():  # also for a token verified before: keys too stale to trust is 503
            raise KeysUnavailable("the broker's signing keys could not be fetched recently enough to trust")
        cached = self._verified.get(token)
        if cached is not None:
            self._verified.move_to_end(token)
            verified = self._still_valid(cached)
        else:
            verified = await self._verify_signed(token)
            self._verified[token] = verified
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        self._check_binding(verified, presented, proofs, target)
        return verified

    def _check_binding(self, verified: VerifiedToken, presented: Presented, proofs: Sequence[str],
                       target: RequestTarget | None) -> None:
        """RFC 9449 section 7: a bound token only as `DPoP` with a fresh proof of its key for
        this request; an unbound one only as `Bearer`."""
        cnf = verified.claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
        if jkt is None:
            if presented.scheme == DPOP:
                raise TokenRejected("the token is not DPoP-bound (no cnf.jkt); send it as `Bearer <token>`",
                                    scheme=DPOP)
            return
        if not isinstance(jkt, str):
            raise TokenRejected("the token's cnf.jkt is not a string", scheme=DPOP)
        if presented.scheme != DPOP:
            raise TokenRejected("the token is DPoP-bound (cnf.jkt): send it as `DPoP <token>` with a DPoP proof, "
                                "not as a Bearer token", scheme=DPOP)
        if len(proofs) != 1:
            raise TokenRejected(f"a DPoP-bound token needs exactly one DPoP proof header, the request has "
                                f"{len(proofs)}", error="invalid_dpop_proof", scheme=DPOP)
        if target is None:
            raise TokenRejected("this endpoint cannot check DPoP proofs", error="invalid_dpop_proof", scheme=DPOP)
        now = self._clock()
        try:
            proof = dpop.check_proof(proofs[0], htm=target.method, htu=target.url, now=now,
                                     window=DPOP_PROOF_WINDOW, access_token=presented.token, jkt=jkt)
        except dpop.ProofError as exc:
            raise TokenRejected(f"the DPoP proof fails the check of {exc}", error="invalid_dpop_proof",
                                scheme=DPOP) from None
        if not self.replays.remember(proof.jti, now):
            raise TokenRejected("the DPoP proof fails the check of jti: this proof was used already",
                                error="invalid_dpop_proof", scheme=DPOP)

    def _still_valid(self, verified: VerifiedToken) -> VerifiedToken:
        """What can change for a token whose signature and claims were checked: time and revocation."""
        now = self._clock()
        exp, nbf = verified.claims.get("exp"), verified.claims.get("nbf")
        if isinstance(exp, (int, float)) and now > exp + self.leeway:
            raise TokenRejected("the token has expired")
        if isinstance(nbf, (int, float)) and now < nbf - self.leeway:
            raise TokenRejected("the token is not valid yet (nbf)")
        reason = self.revocations.revoked(verified.claims, verified.audience)
        if reason is not None:
            raise TokenRejected(reason)
        return verified

    async def _verify_signed(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("the token is not a well-formed JWT") from None
        alg, typ, kid = header.get("alg"), header.get("typ"), header.get("kid")
        if alg != ALGORITHM:
            raise TokenRejected(f"token algorithm {str(alg)[:20]!r} is not accepted; only {ALGORITHM}")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise TokenRejected(f"token type {str(typ)[:20]!r} is not an access token (at+jwt)")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("the token names no signing key (kid)")
        key = await self._key(kid)
        if key is None:
            raise TokenRejected(f"the token is signed by an unknown key (kid {kid[:40]!r})")
        try:
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], issuer=self.issuer, leeway=timedelta(seconds=self.leeway),
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet (nbf)") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token was not issued by this proxy's broker") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"the token is invalid: {exc}"[:200]) from None
        audience = self._audience(claims.get("aud"))
        subject, jti, scope = claims.get("sub"), claims.get("jti"), claims.get("scope", "")
        if not isinstance(subject, str) or not isinstance(jti, str) or not isinstance(scope, str):
            raise TokenRejected("the token's sub, jti and scope must be strings")
        reason = self.revocations.revoked(claims, audience)
        if reason is not None:
            raise TokenRejected(reason)
        decision_id = claims.get("decision_id")
        return VerifiedToken(claims=claims, subject=subject, audience=audience, scope=scope, jti=jti,
                             decision_id=decision_id if isinstance(decision_id, str) else None)

    def _audience(self, aud: Any) -> str:
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        if not isinstance(aud, str):
            raise TokenRejected("the token must name exactly one audience")
        if aud not in self.audiences:
            raise TokenRejected(f"the token is for audience {aud[:60]!r}, which this service does not serve")
        return aud
