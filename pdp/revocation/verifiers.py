"""Verifiers on the event stream: an access proxy names the audiences it serves
(`GET /v1/revocations/events?audience=a&audience=b`), authenticated by its ServiceAccount
token, and the `serves` policy (`jitmesh/authz/serves`, asked with the attested subject as
in docs/contract.md §3) must list every one of them. Such a stream carries every subject,
pod and jti revocation (any caller may present a token to a verifier) and the audience
revocations of the served audiences only (docs/contract.md §2, §7)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pdp.attestation.identity import Subject
from pdp.decision import policy_input
from pdp.http.errors import OAuthError, invalid_request, unavailable
from pdp.http.services import Broker
from pdp.opa import OPAUnavailable

SERVES_POLICY_PATH = "jitmesh/authz/serves"
MAX_AUDIENCES = 32


def requested_audiences(values: Sequence[str]) -> frozenset[str] | None:
    """The `audience` query parameters of a subscription; None when there are none."""
    if not values:
        return None
    if len(values) > MAX_AUDIENCES or any(not v or len(v) > 253 or not v.isprintable() for v in values):
        raise invalid_request(f"audience: from 1 to {MAX_AUDIENCES} non-empty audience names are expected")
    return frozenset(values)


async def served_audiences(broker: Broker, subject: Subject, requested: frozenset[str]) -> frozenset[str]:
    """`requested` when the serves policy lets this subject serve each of them; else 403 naming the rest."""
    doc = {"subject": policy_input(subject, "", [], None, time.time(), None)["subject"]}
    try:
        answer = await broker.opa.query(SERVES_POLICY_PATH, doc)
    except OPAUnavailable as exc:
        raise unavailable(f"which audiences {subject.sub} may serve cannot be decided right now: {exc}") from None
    result = answer.get("result")
    served = {a for a in result if isinstance(a, str)} if isinstance(result, list) else set()
    refused = sorted(requested - served)
    if refused:
        raise OAuthError(403, "access_denied", f"{subject.sub} may not serve audience(s) {', '.join(refused)} "
                         f"(policy {SERVES_POLICY_PATH})")
    return requested
