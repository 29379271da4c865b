"""RFC 8693 token exchange (docs/contract.md §2): read the request, attest the subject, refuse
revoked ones, ask OPA, grant no more than was both allowed and asked, audit, sign.

`parse_form` and `parse_token_request` are pure; `TokenExchange.exchange` runs one request
through the steps and returns either an `Issued` or an `OAuthError`, never raising for
anything a client sent. Every path past attestation is audited before it answers, and no
token is returned unless its audit record was written.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from jitmesh import dpop
from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, SCOPE_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_POSTGRESQL
from jitmesh.log import get_logger
from pdp.attestation.identity import AttestationError, AttestationUnavailable, Attestor, Subject
from pdp.audit import Auditor, decision_record
from pdp.config import BrokerConfig
from pdp.dblogins.postgres import PREFIX as LOGIN_PREFIX
from pdp.dblogins.postgres import LoginOwner, LoginUnavailable
from pdp.dblogins.service import DatabaseLogins
from pdp.decision import Decision, MalformedDecision, grant, parse_decision, policy_input, rfc3339
from pdp.enforcement import DRY_RUN_EVENT, dry_run_decision
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.metrics import BrokerMetrics
from pdp.opa import OPAClient, OPAUnavailable
from pdp.revocation.index import RevocationIndex, RevocationIndexStale
from pdp.shadow.live import LiveShadow
from pdp.store.base import AccessRequest, AuditRecord, StoreError
from pdp.tokens import KeyRing, access_token_claims

log = get_logger("pdp.exchange")

MAX_BODY_BYTES = 64 * 1024
MAX_SUBJECT_TOKEN_BYTES = 16 * 1024
MAX_AUDIENCE_CHARS = 256
MAX_SCOPES = 64
PENDING_INTERVAL_SECONDS = 5
PENDING_LIFETIME_SECONDS = 86400  # an unanswered access request lapses after a day; the next ask opens a new one
DPOP_PROOF_WINDOW = 60.0  # seconds a DPoP proof's iat may be old; its jti is remembered this long

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_AUDIENCE = re.compile(r"[\x21-\x7e]+")
_SINGLE = ("grant_type", "subject_token", "subject_token_type", "scope", "requested_ttl",
           "requested_token_type", "access_request_id", "actor_token", "actor_token_type", "resource",
           "refresh_login")
# RFC 6749 section 2.3: a client authenticates with a secret or an assertion; this broker
# takes none (discovery says "none"), so any of them is refused rather than ignored.
_CLIENT_CREDENTIALS = ("client_secret", "client_assertion", "client_assertion_type")
_ACCESS_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_LOGIN = re.compile(re.escape(LOGIN_PREFIX) + r"[0-9a-f]{32}")


def covers(request: AccessRequest, subject: str, audience: str, scopes: tuple[str, ...], now: float) -> bool:
    """Whether `request` is about exactly this subject, audience and (sorted) scopes and has not lapsed."""
    return ((request.subject, request.audience, request.scopes) == (subject, audience, scopes)
            and request.expires_at > now)


def approval_input(request: AccessRequest) -> dict[str, Any]:
    """`input.approval` for a decided access request (docs/contract.md §3; null while none is decided)."""
    return {"access_request_id": request.id, "approved": request.status == "approved", "by": request.decided_by,
            "at": rfc3339(request.decided_at) if request.decided_at is not None else None,
            "reason": request.reason, "expires_at": rfc3339(request.expires_at)}


@dataclass(frozen=True)
class TokenRequest:
    subject_token: str
    audience: str
    scopes: tuple[str, ...]
    requested_ttl: int | None
    access_request_id: str | None = None  # from an earlier authorization_pending answer
    issued_token_type: str = TOKEN_TYPE_JWT  # what the response says was issued: what was asked, of the two
    refresh_login: str | None = None  # a database login of this workload to rotate and extend (§9)


@dataclass(frozen=True)
class Issued:
    access_token: str
    expires_in: int
    scope: str
    decision_id: str
    issued_token_type: str = TOKEN_TYPE_JWT
    login: Mapping[str, Any] | None = None  # a database login: username, host, port, dbname, sslmode
    dpop_bound: bool = False  # the token carries cnf.jkt (RFC 9449 section 5)

    def body(self) -> dict[str, Any]:
        # RFC 8693 section 2.2.1: N_A when what is issued is no access token (a password)
        token_type = "N_A" if self.login is not None else dpop.TOKEN_TYPE_DPOP if self.dpop_bound else "Bearer"
        doc = {"access_token": self.access_token, "issued_token_type": self.issued_token_type,
               "token_type": token_type, "expires_in": self.expires_in,
               "scope": self.scope, "decision_id": self.decision_id, **(self.login or {})}
        if not self.scope:  # nothing granted: no scope at all rather than an empty one (RFC 6749 section 5.1)
            del doc["scope"]
        return doc


def invalid_client(description: str) -> OAuthError:
    """RFC 6749 section 5.2: 401 with a challenge for the scheme the client tried."""
    return OAuthError(401, "invalid_client", description, challenge='Basic realm="jitmesh"')


def refuse_client_credentials(authorization: str | None, params: Mapping[str, list[str]]) -> None:
    """`invalid_client` when the request carries client credentials: the token endpoint's
    only client authentication method is `none` (the subject token says who is asking)."""
    if authorization is not None:
        scheme = authorization.partition(" ")[0] or "an empty"
        raise invalid_client(f"client authentication is not supported here ({scheme:.20} Authorization header); "
                             "send no Authorization header: the subject_token identifies the workload")
    sent = [name for name in _CLIENT_CREDENTIALS if name in params]
    if sent:
        raise invalid_client(f"client authentication is not supported here ({', '.join(sent)} in the body); "
                             "send none: the subject_token identifies the workload")


def parse_form(body: bytes, content_type: str | None) -> dict[str, list[str]]:
    """An `application/x-www-form-urlencoded` body as name -> values; `invalid_request`
    for anything else (other content types, non-UTF-8, oversized)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise invalid_request(f"the body must be application/x-www-form-urlencoded, not {media or 'absent'!r:.80}")
    if len(body) > MAX_BODY_BYTES:
        raise invalid_request(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("ascii")  # a form body is percent-encoded ASCII
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict",
                          max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_request(f"the form body cannot be decoded as UTF-8 form fields: {type(exc).__name__}") from None
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def invalid_dpop_proof(description: str) -> OAuthError:
    return OAuthError(400, "invalid_dpop_proof", description)


def proof_expiry(now: float) -> float:
    """Until when a proof accepted at `now` must be remembered: as long as its iat could pass."""
    return now + DPOP_PROOF_WINDOW + dpop.CLOCK_SKEW


def dpop_proof_of(headers: Sequence[str], token_endpoint: str, now: float) -> dpop.CheckedProof | None:
    """The checked proof of a token request's `DPoP` headers (at most one, RFC 9449 section
    4.3), None when there is none; `invalid_dpop_proof` naming the failed check otherwise."""
    if not headers:
        return None
    if len(headers) > 1:
        raise invalid_dpop_proof(f"{len(headers)} DPoP headers; a request carries exactly one proof")
    try:
        return dpop.check_proof(headers[0], htm="POST", htu=token_endpoint, now=now, window=DPOP_PROOF_WINDOW)
    except dpop.ProofError as exc:
        raise invalid_dpop_proof(f"the DPoP proof fails the check of {exc}") from None


def target_audience(audience: str | None, resource: str | None, resources: Mapping[str, str]) -> str:
    """The one audience a request names: `audience`, or the audience whose URI `resource` is
    (RFC 8693 section 2.1; the broker's --resource URI=AUDIENCE). Both must agree."""
    if resource is None:
        if not audience:
            raise invalid_request("missing audience: exactly one audience (or a known resource URI) is required")
        return audience
    mapped = resources.get(resource)
    if mapped is None:
        raise OAuthError(400, "invalid_target", f"resource {resource!r:.200} names no known audience"
                         + (f"; known: {', '.join(sorted(resources))[:400]}" if resources else ""))
    if audience and audience != mapped:
        raise OAuthError(400, "invalid_target", f"resource {resource!r:.200} is audience {mapped!r}, "
                         f"but the request names audience {audience!r:.100}: they must agree")
    return mapped


def parse_token_request(params: Mapping[str, list[str]], resources: Mapping[str, str] | None = None) -> TokenRequest:
    """The exchange parameters of docs/contract.md §2, strictly; `resources` maps the resource
    URIs a request may name instead of an audience to their audiences."""
    for name in (*_SINGLE, "audience"):
        values = params.get(name, [])
        if len(values) > 1:
            if name == "audience":
                raise invalid_request("exactly one audience is allowed; the request has more than one")
            raise invalid_request(f"parameter {name!r} is given more than once")

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values else None

    grant_type = one("grant_type")
    if not grant_type:
        raise invalid_request(f"missing grant_type; expected {GRANT_TYPE_TOKEN_EXCHANGE}")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise OAuthError(400, "unsupported_grant_type",
                         f"grant_type {grant_type!r:.100} is not supported; expected {GRANT_TYPE_TOKEN_EXCHANGE}")
    token_type = one("subject_token_type")
    if not token_type:
        raise invalid_request(f"missing subject_token_type; expected {TOKEN_TYPE_JWT}")
    if token_type != TOKEN_TYPE_JWT:
        raise invalid_request(f"subject_token_type {token_type!r:.100} is not supported; expected {TOKEN_TYPE_JWT}")
    requested_type = one("requested_token_type") or None
    if requested_type is not None and requested_type not in (TOKEN_TYPE_JWT, ACCESS_TOKEN_TYPE,
                                                             TOKEN_TYPE_POSTGRESQL):
        raise invalid_request(f"requested_token_type {requested_type!r:.100} is not supported; "
                              f"expected {TOKEN_TYPE_JWT}, {ACCESS_TOKEN_TYPE} or {TOKEN_TYPE_POSTGRESQL}")
    refresh_login = one("refresh_login") or None
    if refresh_login is not None and (requested_type != TOKEN_TYPE_POSTGRESQL or not _LOGIN.fullmatch(refresh_login)):
        raise invalid_request(f"refresh_login {refresh_login!r:.80} is malformed: the username of a database login "
                              f"this broker issued, with requested_token_type {TOKEN_TYPE_POSTGRESQL}")
    actor, actor_type = one("actor_token"), one("actor_token_type")
    if actor and not actor_type:
        raise invalid_request("actor_token needs actor_token_type (RFC 8693 section 2.1)")
    if actor_type and not actor:
        raise invalid_request("actor_token_type is given without an actor_token (RFC 8693 section 2.1)")
    if actor:
        raise invalid_request("delegation is not supported: jitmesh issues tokens only to the workload whose own "
                              "subject_token is presented; send no actor_token")
    subject_token = (one("subject_token") or "").strip()  # a token read from a file often ends in a newline
    if not subject_token:
        raise invalid_request("missing subject_token: the pod's projected ServiceAccount token")
    if len(subject_token) > MAX_SUBJECT_TOKEN_BYTES:
        raise invalid_request(f"subject_token is longer than {MAX_SUBJECT_TOKEN_BYTES} bytes")
    if not subject_token.isascii():
        raise invalid_request("subject_token must be a compact JWS (ASCII)")
    audience = target_audience(one("audience"), one("resource"), resources or {})
    if "," in audience or " " in audience:
        raise invalid_request(f"audience {audience!r:.100} names more than one audience; exactly one is allowed")
    if len(audience) > MAX_AUDIENCE_CHARS or not _AUDIENCE.fullmatch(audience):
        raise invalid_request(f"audience {audience!r:.100} is malformed: one name of printable ASCII "
                              f"without spaces, at most {MAX_AUDIENCE_CHARS} characters")
    scopes: tuple[str, ...] = ()
    scope = one("scope")
    if scope:
        parts = scope.split(" ")
        if not all(SCOPE_TOKEN.fullmatch(p) for p in parts):
            raise OAuthError(400, "invalid_scope", f"scope {scope!r:.100} is malformed: expected scope tokens "
                             "separated by single spaces (RFC 6749 section 3.3)")
        if len(parts) > MAX_SCOPES:
            raise OAuthError(400, "invalid_scope", f"at most {MAX_SCOPES} scopes may be asked for")
        scopes = tuple(dict.fromkeys(parts))
    ttl: int | None = None
    raw_ttl = one("requested_ttl")
    if raw_ttl is not None and raw_ttl != "":
        if not raw_ttl.isascii() or not raw_ttl.isdigit() or int(raw_ttl) <= 0:
            raise invalid_request(f"requested_ttl {raw_ttl!r:.40} must be a positive whole number of seconds")
        if len(raw_ttl) > 9:
            raise invalid_request(f"requested_ttl {raw_ttl!r:.40} is too large: at most 999999999 seconds "
                                  "(the broker caps every lifetime at its --max-ttl anyway)")
        ttl = int(raw_ttl)
    request_id = one("access_request_id") or None
    if request_id is not None and not _ACCESS_REQUEST_ID.fullmatch(request_id):
        raise invalid_request(f"access_request_id {request_id!r:.80} is malformed: expected the id of an "
                              "authorization_pending answer (letters, digits and '-', at most 64)")
    return TokenRequest(subject_token=subject_token, audience=audience, scopes=scopes, requested_ttl=ttl,
                        access_request_id=request_id, issued_token_type=requested_type or TOKEN_TYPE_JWT,
                        refresh_login=refresh_login)


class TokenExchange:
    """One broker's issuance path; its collaborators are built by the app."""

    def __init__(self, config: BrokerConfig, attestor: Attestor, opa: OPAClient, keys: KeyRing,
                 revocations: RevocationIndex, auditor: Auditor, metrics: BrokerMetrics,
                 clock: Callable[[], float] = time.time, shadow: LiveShadow | None = None,
                 logins: DatabaseLogins | None = None) -> None:
        self.config = config
        self.attestor = attestor
        self.opa = opa
        self.keys = keys
        self.revocations = revocations
        self.auditor = auditor
        self.metrics = metrics
        self.clock = clock
        self.shadow = shadow  # candidate policy asked beside the enforced one (pdp/shadow/live.py)
        self.logins = logins  # --targets-file: audiences whose "tokens" are PostgreSQL logins

    async def _audit_refusal(self, record: AuditRecord, error: OAuthError) -> OAuthError:
        """Write the record of a refusal; the refusal stands either way, but a store that
        cannot write turns it into a 503."""
        try:
            await self.auditor.write(record)
        except StoreError as exc:
            Auditor.log(record, persisted=False)
            self.metrics.errors.labels("store_unavailable").inc()
            log.error("audit.write_failed", decision_id=record.decision_id, error=str(exc))
            if error.status != 503:
                return unavailable("the audit store cannot be written; nothing was issued", record.decision_id)
        return error

    async def _spend(self, proof: dpop.CheckedProof, now: float, decision_id: str) -> OAuthError | None:
        """Record the proof's jti in the store every replica shares: None the first time, the
        refusal for a proof used before or a store that cannot say."""
        try:
            fresh = await self.auditor.store.remember_dpop_proof(proof.jti, proof_expiry(now), now)
        except StoreError as exc:
            self.metrics.errors.labels("store_unavailable").inc()
            return unavailable(f"DPoP proofs cannot be recorded right now: {exc}", decision_id)
        if not fresh:
            return OAuthError(400, "invalid_dpop_proof", "the DPoP proof fails the check of jti: this proof was "
                              "used already", decision_id)
        return None

    async def exchange(self, params: Mapping[str, list[str]], client_ip: str | None,
                       dpop_proofs: Sequence[str] = ()) -> Issued | OAuthError:
        """One token request; `dpop_proofs` are the values of its `DPoP` headers."""
        try:
            req = parse_token_request(params, self.config.resources)
        except OAuthError as bad:
            self.metrics.denied.labels(bad.error).inc()
            return bad
        try:
            proof = dpop_proof_of(dpop_proofs, f"{self.config.issuer}/token", self.clock())
        except OAuthError as bad:
            self.metrics.denied.labels(bad.error).inc()
            return bad
        dpop_jkt = proof.jkt if proof is not None else None
        if req.issued_token_type == TOKEN_TYPE_POSTGRESQL and (self.logins is None
                                                               or req.audience not in self.logins.targets):
            self.metrics.denied.labels("invalid_target").inc()
            known = ", ".join(sorted(self.logins.targets)) if self.logins else ""
            return OAuthError(400, "invalid_target", f"audience {req.audience!r:.100} is no postgresql target of "
                              f"this broker's --targets-file" + (f"; known: {known[:400]}" if known else ""))
        decision_id = str(uuid.uuid4())
        now = self.clock()
        policy_path = self.config.policy_path

        def record(event: str, **kw: Any) -> AuditRecord:
            if dpop_jkt is not None:  # the key the token is (or would have been) bound to
                kw["extra"] = {"dpop_jkt": dpop_jkt, **(kw.get("extra") or {})}
            return decision_record(decision_id=decision_id, time=now, event=event, policy_path=policy_path,
                                   audience=req.audience, requested_scopes=req.scopes,
                                   requested_ttl=req.requested_ttl, client_ip=client_ip, **kw)

        # who is asking
        try:
            subject = await self.attestor.attest(req.subject_token)
        except AttestationError as exc:
            err = OAuthError(400, "invalid_grant", str(exc), decision_id)
            self.metrics.denied.labels("invalid_grant").inc()
            return await self._audit_refusal(record("denied", error=err.error, error_description=err.description),
                                             err)
        except AttestationUnavailable as exc:
            err = unavailable(f"the subject token cannot be verified right now: {exc}", decision_id)
            self.metrics.errors.labels("attestation_unavailable").inc()
            return await self._audit_refusal(record("error", error=err.error, error_description=str(exc)), err)
        pod_uid = subject.pod.uid if subject.pod else None

        def subject_record(event: str, **kw: Any) -> AuditRecord:
            return record(event, subject=subject.sub, pod_uid=pod_uid, **kw)

        # revoked?
        refused = await self._revoked(subject.sub, pod_uid, req.audience, decision_id, subject_record)
        if refused is not None:
            return refused

        # what does the policy say
        doc = policy_input(subject, req.audience, req.scopes, req.requested_ttl, now, client_ip, dpop_jkt=dpop_jkt)
        asked = await self._ask(doc, decision_id, now, subject_record)
        if isinstance(asked, OAuthError):
            return asked
        decision, raw_decision = asked
        not_after: float | None = None  # an approval's end: no token outlives it
        if decision.approval_required:  # a human must say yes: is there an answer yet?
            request = await self._access_request(req, subject, pod_uid, now, decision_id, subject_record)
            if isinstance(request, OAuthError):
                return request
            if request.status == "pending":
                return await self._pending(decision, request, decision_id, subject_record, doc, raw_decision)
            doc = policy_input(subject, req.audience, req.scopes, req.requested_ttl, now, client_ip,
                               approval=approval_input(request), dpop_jkt=dpop_jkt)
            asked = await self._ask(doc, decision_id, now, subject_record)
            if isinstance(asked, OAuthError):
                return asked
            decision, raw_decision = asked
            if decision.approval_required:  # the policy did not take the answer: still pending
                return await self._pending(decision, request, decision_id, subject_record, doc, raw_decision)
            not_after = request.expires_at if request.status == "approved" else None
        if decision.error is not None:  # the request names no real target or scope: dry-run issues none either
            reasons = "; ".join(decision.reasons) or f"the policy answered {decision.error}"
            err = OAuthError(400, decision.error, reasons, decision_id)
            self.metrics.denied.labels(decision.error).inc()
            return await self._audit_refusal(
                subject_record("denied", error=err.error, error_description=reasons, reasons=decision.reasons,
                               policy_input=doc, raw_decision=raw_decision), err)
        if not decision.allow and self.config.enforcement == "dry-run":
            return await self._dry_run(req, subject, decision, decision_id, now, subject_record, doc, raw_decision,
                                       proof)
        if not decision.allow:
            reasons = "; ".join(decision.reasons) or "the policy did not allow this request"
            err = OAuthError(403, "access_denied", reasons, decision_id)
            self.metrics.denied.labels("access_denied").inc()
            return await self._audit_refusal(
                subject_record("denied", error=err.error, error_description=reasons, reasons=decision.reasons,
                               policy_input=doc, raw_decision=raw_decision), err)
        if decision.require_dpop and dpop_jkt is None:
            err = OAuthError(400, "invalid_request", "this audience requires DPoP: send a DPoP proof (RFC 9449) "
                             "with the request, and the token will be bound to its key", decision_id)
            self.metrics.denied.labels(err.error).inc()
            return await self._audit_refusal(
                subject_record("denied", error=err.error, error_description=err.description,
                               reasons=decision.reasons, policy_input=doc, raw_decision=raw_decision), err)
        return await self._issue(req, subject, decision, decision_id, now, subject_record, doc, raw_decision,
                                 not_after=not_after, proof=proof)

    async def _revoked(self, sub: str, pod_uid: str | None, audience: str, decision_id: str,
                       subject_record: Callable[..., AuditRecord]) -> OAuthError | None:
        """The audited refusal when this subject, pod or audience is revoked, or the revocation
        list is too stale to say; None when issuance may go on."""
        try:
            self.revocations.check_fresh()
        except RevocationIndexStale as exc:
            err = unavailable(str(exc), decision_id)
            self.metrics.errors.labels("store_unavailable").inc()
            return await self._audit_refusal(subject_record("error", error=err.error, error_description=str(exc)),
                                             err)
        revoked = self.revocations.refusal(sub, pod_uid, audience)
        if revoked is None:
            return None
        what = {"subject": "revoked subject", "pod_uid": "revoked pod", "audience": "revoked audience"}
        err = OAuthError(400, "invalid_grant", f"{what.get(revoked.kind, 'revoked')} {revoked.value!r}: "
                         f"{revoked.reason} (revocation {revoked.id})", decision_id)
        self.metrics.denied.labels("invalid_grant").inc()
        return await self._audit_refusal(
            subject_record("denied", error=err.error, error_description=err.description,
                           extra={"revocation_id": revoked.id}), err)

    async def _ask(self, doc: dict[str, Any], decision_id: str, now: float,
                   subject_record: Callable[..., AuditRecord]) -> tuple[Decision, Any] | OAuthError:
        """The policy's decision on `doc` and its raw document, or the audited refusal."""
        policy_path = self.config.policy_path
        started = time.perf_counter()
        try:
            raw = await (self.opa.query(policy_path, doc) if self.shadow is None
                         else self.shadow.query(self.opa, policy_path, doc, decision_id, now))
        except OPAUnavailable as exc:
            self.metrics.opa_seconds.observe(time.perf_counter() - started)
            err = unavailable(f"the policy engine cannot be reached: {exc}", decision_id)
            self.metrics.errors.labels("opa_unavailable").inc()
            return await self._audit_refusal(
                subject_record("error", error=err.error, error_description=str(exc), policy_input=doc), err)
        self.metrics.opa_seconds.observe(time.perf_counter() - started)
        try:
            decision = parse_decision(raw)
        except MalformedDecision as exc:
            err = OAuthError(403, "access_denied", f"policy error: {exc}", decision_id)
            self.metrics.errors.labels("policy_error").inc()
            self.metrics.denied.labels("access_denied").inc()
            return await self._audit_refusal(
                subject_record("error", error="policy_error", error_description=str(exc), policy_input=doc,
                               raw_decision=raw.get("result")), err)
        return decision, raw["result"]

    async def _access_request(self, req: TokenRequest, subject: Subject, pod_uid: str | None, now: float,
                              decision_id: str,
                              subject_record: Callable[..., AuditRecord]) -> AccessRequest | OAuthError:
        """The access request this token request falls under: the one it names when that one
        is for the same subject, audience and scopes and has not lapsed; else the newest such
        one; else a new pending one. A store error fails closed (503, audited)."""
        store = self.auditor.store
        scopes = tuple(sorted(req.scopes))
        try:
            found = await store.get_access_request(req.access_request_id) if req.access_request_id else None
            if found is not None and not covers(found, subject.sub, req.audience, scopes, now):
                found = None
            if found is None:
                found = await store.find_access_request(subject.sub, req.audience, scopes, now)
            if found is None:
                found = AccessRequest(id=str(uuid.uuid4()), subject=subject.sub, audience=req.audience,
                                      scopes=scopes, created_at=now, expires_at=now + PENDING_LIFETIME_SECONDS,
                                      pod_uid=pod_uid)
                await store.add_access_request(found)
                log.info("access_request.created", access_request_id=found.id, subject=subject.sub,
                         audience=req.audience, scopes=" ".join(scopes), decision_id=decision_id)
        except StoreError as exc:
            err = unavailable(f"access requests cannot be read or written right now: {exc}", decision_id)
            self.metrics.errors.labels("store_unavailable").inc()
            return await self._audit_refusal(subject_record("error", error=err.error, error_description=str(exc)),
                                             err)
        return found

    async def _pending(self, decision: Decision, request: AccessRequest, decision_id: str,
                       subject_record: Callable[..., AuditRecord], doc: dict[str, Any],
                       raw_decision: Any) -> OAuthError:
        err = OAuthError(400, "authorization_pending",
                         "; ".join(decision.reasons) or "a human approval is required before a token is issued",
                         decision_id, extra={"access_request_id": request.id, "interval": PENDING_INTERVAL_SECONDS})
        self.metrics.denied.labels("authorization_pending").inc()
        return await self._audit_refusal(
            subject_record("pending", reasons=decision.reasons, policy_input=doc, raw_decision=raw_decision,
                           extra={"access_request_id": request.id}), err)

    async def _dry_run(self, req: TokenRequest, subject: Subject, decision: Decision, decision_id: str, now: float,
                       subject_record: Callable[..., AuditRecord], doc: dict[str, Any],
                       raw_decision: Any, proof: dpop.CheckedProof | None) -> Issued | OAuthError:
        """--enforcement dry-run: what the policy denied is issued as requested, audited as such."""
        outcome = await self._issue(req, subject, dry_run_decision(decision, req.scopes), decision_id, now,
                                    subject_record, doc, raw_decision, event=DRY_RUN_EVENT, proof=proof)
        if isinstance(outcome, Issued):
            self.metrics.dry_run_allowed.inc()
        return outcome

    async def _issue(self, req: TokenRequest, subject: Subject, decision: Decision, decision_id: str, now: float,
                     subject_record: Callable[..., AuditRecord], doc: dict[str, Any],
                     raw_decision: Any, event: str = "issued", not_after: float | None = None,
                     proof: dpop.CheckedProof | None = None) -> Issued | OAuthError:
        """Sign and audit; with a DPoP proof, its jti is spent in the audit record's transaction
        (one durable write), and a proof used before stops the token there."""

        async def refuse(spent: OAuthError) -> OAuthError:
            self.metrics.denied.labels(spent.error).inc()
            return await self._audit_refusal(
                subject_record("error" if spent.status == 503 else "denied", error=spent.error,
                               error_description=spent.description, policy_input=doc, raw_decision=raw_decision),
                spent)
        dpop_jkt = proof.jkt if proof is not None else None
        granted = grant(decision, req.scopes, req.requested_ttl, self.config.default_ttl, self.config.max_ttl)
        if not_after is not None:
            granted = replace(granted, ttl=max(1, min(granted.ttl, int(not_after - now))))
        # The policy (and an approval) took awaits: a revocation made meanwhile must still stop
        # this token. Nothing awaits between this check and the signature.
        refused = await self._revoked(subject.sub, subject.pod.uid if subject.pod else None, req.audience,
                                      decision_id, subject_record)
        if refused is not None:
            return refused
        dry_run = event == DRY_RUN_EVENT
        if req.issued_token_type == TOKEN_TYPE_POSTGRESQL:
            spent = await self._spend(proof, now, decision_id) if proof is not None else None
            if spent is not None:
                return await refuse(spent)
            return await self._issue_login(req, subject, granted.scopes, granted.ttl, decision, decision_id, now,
                                           subject_record, doc, raw_decision, event)
        claims = access_token_claims(issuer=self.config.issuer, subject=subject, audience=req.audience,
                                     scopes=granted.scopes, ttl=granted.ttl, now=now, decision_id=decision_id,
                                     dry_run=dry_run, dpop_jkt=dpop_jkt)
        token = self.keys.sign(claims)
        rec = subject_record(event, jti=claims["jti"], granted_scopes=granted.scopes, ttl=granted.ttl,
                             reasons=decision.reasons, policy_input=doc, raw_decision=raw_decision,
                             extra={"kid": self.keys.current.record.kid, "exp": claims["exp"]})
        try:
            if proof is None:
                await self.auditor.write(rec)
            elif await self.auditor.write_with_dpop_proof(rec, proof.jti, proof_expiry(now), now) is None:
                return await refuse(OAuthError(400, "invalid_dpop_proof", "the DPoP proof fails the check of jti: "
                                               "this proof was used already", decision_id))
        except StoreError as exc:
            Auditor.log(decision_record(decision_id=decision_id, time=now, event="error",
                                        policy_path=self.config.policy_path,
                                        subject=subject.sub, audience=req.audience, error="store_unavailable",
                                        error_description=str(exc)), persisted=False)
            self.metrics.errors.labels("store_unavailable").inc()
            return unavailable("the audit store cannot be written; no token was issued", decision_id)
        self.metrics.issued.inc()
        if dry_run:
            log.warning("token.issued_in_dry_run", decision_id=decision_id, subject=subject.sub,
                        audience=req.audience, jti=claims["jti"], reasons=list(decision.reasons),
                        message="the policy denied this request; --enforcement dry-run issued it anyway")
        return Issued(access_token=token, expires_in=granted.ttl, scope=" ".join(granted.scopes),
                      decision_id=decision_id, issued_token_type=req.issued_token_type,
                      dpop_bound=dpop_jkt is not None)

    async def _issue_login(self, req: TokenRequest, subject: Subject, scopes: tuple[str, ...], ttl: int,
                           decision: Decision, decision_id: str, now: float,
                           subject_record: Callable[..., AuditRecord], doc: dict[str, Any], raw_decision: Any,
                           event: str) -> Issued | OAuthError:
        """docs/contract.md §9: a PostgreSQL login instead of a JWT. The role is made whole in one
        transaction, then recorded; a role left unrecorded (a crash, a store that refused) is
        dropped here when possible and by the sweep otherwise."""
        assert self.logins is not None
        logins = self.logins.targets[req.audience]
        target = logins.target
        unknown = [s for s in scopes if s not in target.scopes]
        if unknown:
            err = OAuthError(400, "invalid_scope", f"scope {unknown[0]!r} grants no role on database target "
                             f"{req.audience!r}; its scopes: {', '.join(sorted(target.scopes))}", decision_id)
            self.metrics.denied.labels("invalid_scope").inc()
            return await self._audit_refusal(
                subject_record("denied", error=err.error, error_description=err.description, policy_input=doc,
                               raw_decision=raw_decision), err)
        pod_uid = subject.pod.uid if subject.pod else None
        owner = LoginOwner(jti=uuid.uuid4().hex, subject=subject.sub, pod_uid=pod_uid, audience=req.audience,
                           scopes=scopes, decision_id=decision_id, issued_at=now, expires_at=now + ttl)
        refreshed = False
        try:
            if req.refresh_login is not None:
                jti = req.refresh_login[len(LOGIN_PREFIX):]
                current = await logins.get(jti)
                mine = (current is not None and current.owner is not None
                        and (current.owner.subject, current.owner.pod_uid, current.owner.audience)
                        == (subject.sub, pod_uid, req.audience) and current.owner.scopes == scopes
                        and self.revocations.lookup("jti", jti) is None)
                if mine:  # same workload, same grant: rotate and extend, so its open sessions go on
                    owner = replace(owner, jti=jti)
                    refreshed = True
            login = await (logins.rotate(owner) if refreshed else logins.create(owner))
        except LoginUnavailable as exc:
            err = unavailable(str(exc), decision_id)
            self.metrics.errors.labels("database_unavailable").inc()
            return await self._audit_refusal(subject_record("error", error=err.error, error_description=str(exc)),
                                             err)
        # Making the role awaited the database: a revocation made meanwhile found no role to end.
        revoked = self.revocations.refusal(subject.sub, pod_uid, req.audience)
        if revoked is not None:
            try:
                await logins.end(login.username)
            except LoginUnavailable:
                pass  # unrecorded and revoked: the sweep drops it
            return await self._revoked(subject.sub, pod_uid, req.audience, decision_id, subject_record) or \
                unavailable("revoked while the login was made", decision_id)
        rec = subject_record(event, jti=owner.jti, granted_scopes=scopes, ttl=ttl, reasons=decision.reasons,
                             policy_input=doc, raw_decision=raw_decision,
                             extra={"exp": int(owner.expires_at), "kind": "postgresql", "username": login.username,
                                    "refreshed": refreshed})
        try:
            await self.auditor.write(rec)
        except StoreError as exc:
            Auditor.log(rec, persisted=False)
            self.metrics.errors.labels("store_unavailable").inc()
            try:
                await logins.end(login.username)
            except LoginUnavailable:
                pass  # the sweep drops it: it has no issued record
            return unavailable(f"the audit store cannot be written; no login was issued: {exc}", decision_id)
        self.logins.handed_out(req.audience, login.username, login.expires_at, refreshed)
        self.metrics.issued.inc()
        # A password cannot be bound to a key: a DPoP proof sent along is checked and spent, and the
        # answer's token_type N_A (not DPoP) tells the client that nothing is bound.
        log.info("dblogin.issued", decision_id=decision_id, subject=subject.sub, audience=req.audience,
                 username=login.username, refreshed=refreshed, expires_in=ttl,
                 dpop_proof_ignored=bool(doc["request"]["dpop"]))
        return Issued(access_token=login.password, expires_in=ttl, scope=" ".join(scopes), decision_id=decision_id,
                      issued_token_type=TOKEN_TYPE_POSTGRESQL,
                      login={"username": login.username, "host": target.host, "port": target.port,
                             "dbname": target.dbname, "sslmode": target.tls_mode})
