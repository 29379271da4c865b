"""One access decision for one request: the token, then the policy (docs/contract.md §7).

Used alike by the forwarding proxy and by `/v1/check`. The outcome says what to answer
(401 with a challenge, 403 with reasons, 503 fail-closed) or, when allowed, which
`x-jitmesh-*` headers go upstream. Every decision is logged as one JSON line with its id and
counted; the token itself is never logged.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from jitmesh import dpop
from jitmesh.log import get_logger
from proxy.keys import KeysUnavailable
from proxy.metrics import ProxyMetrics
from proxy.policy import Policy, PolicyUnavailable
from proxy.policy_input import build_input
from proxy.verify import RequestTarget, TokenRejected, TokenVerifier

log = get_logger("proxy.decision")


@dataclass(frozen=True)
class RequestFacts:
    method: str
    path: str  # the request target, query string included
    host: str
    scheme: str
    headers: Sequence[tuple[str, str]]  # as received, names in any case
    client: tuple[str, int] | None

    @property
    def url(self) -> str:
        """The URL the client sent the request to, as a DPoP proof names it (`htu`)."""
        return f"{self.scheme}://{self.host}{self.path}"


@dataclass
class Outcome:
    status: int
    outcome: str  # allow, deny, unauthenticated, bad_request, unavailable, policy_error
    decision_id: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.status == 200


def _json(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class Gate:
    def __init__(self, verifier: TokenVerifier, policy: Policy, stream_current: Callable[[], bool],
                 metrics: ProxyMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.verifier = verifier
        self.policy = policy
        self.stream_current = stream_current
        self.metrics = metrics
        self._clock = clock

    def _unavailable(self, decision_id: str, why: str) -> Outcome:
        body = _json({"error": "temporarily_unavailable", "error_description": why, "decision_id": decision_id})
        return Outcome(503, "unavailable", decision_id, [("content-type", "application/json"),
                                                          ("retry-after", "1")], body)

    async def decide(self, facts: RequestFacts) -> Outcome:
        decision_id = str(uuid.uuid4())
        out, subject, audience, reasons = await self._decide(facts, decision_id)
        self.metrics.decisions.labels(out.outcome, audience or "").inc()
        log.info("proxy.decision", decision_id=decision_id, outcome=out.outcome, status=out.status,
                 method=facts.method, path=facts.path[:300], subject=subject, audience=audience,
                 reasons=reasons, client=facts.client[0] if facts.client else None)
        return out

    async def _decide(self, facts: RequestFacts,
                      decision_id: str) -> tuple[Outcome, str | None, str | None, list[str]]:
        if not self.stream_current():
            why = "the revocation event stream from the broker is down; refusing rather than trust a revoked token"
            return self._unavailable(decision_id, why), None, None, [why]
        authorization = [v for k, v in facts.headers if k.lower() == "authorization"]
        proofs = [v for k, v in facts.headers if k.lower() == "dpop"]
        try:
            token = await self.verifier.verify(authorization, proofs, RequestTarget(facts.method, facts.url))
        except TokenRejected as exc:
            body = {"error": exc.error or "invalid_token", "error_description": exc.description,
                    "decision_id": decision_id}
            headers = [("content-type", "application/json")]
            if exc.status == 401:
                headers.append(("www-authenticate", exc.www_authenticate()))
            outcome = "bad_request" if exc.status == 400 else "unauthenticated"
            return Outcome(exc.status, outcome, decision_id, headers, _json(body)), None, None, [exc.description]
        except (KeysUnavailable, dpop.ReplayCacheFull) as exc:
            return self._unavailable(decision_id, str(exc)), None, None, [str(exc)]
        input_doc = build_input(method=facts.method, path=facts.path, host=facts.host, scheme=facts.scheme,
                                headers=facts.headers, client=facts.client, claims=token.claims,
                                audience=token.audience)
        started = self._clock()
        try:
            decision = await self.policy.evaluate(input_doc)
        except PolicyUnavailable as exc:
            why = f"the access policy cannot be evaluated: {exc}"
            return self._unavailable(decision_id, why), token.subject, token.audience, [why]
        finally:
            self.metrics.policy_seconds.observe(self._clock() - started)
        if not decision.allow:
            denied = _json({"error": "access_denied", "reasons": decision.reasons, "decision_id": decision_id})
            outcome = "policy_error" if decision.policy_error else "deny"
            return (Outcome(403, outcome, decision_id, [("content-type", "application/json")], denied),
                    token.subject, token.audience, decision.reasons)
        upstream = [("x-jitmesh-subject", token.subject), ("x-jitmesh-scope", token.scope),
                    ("x-jitmesh-decision-id", decision_id)]
        return Outcome(200, "allow", decision_id, upstream_headers=upstream), token.subject, token.audience, []
