"""The policy contract (docs/contract.md §3) as pure functions: the input the broker sends OPA,
the strict reading of the decision OPA returns, and what is granted from it."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the attestation module pulls in jwt and cryptography
    from pdp.attestation.identity import Subject


class MalformedDecision(ValueError):
    """OPA answered, but not with a decision document of the contract: a deny, audited
    as a policy error."""


@dataclass(frozen=True)
class Decision:
    allow: bool
    scopes: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    reasons: tuple[str, ...] = ()
    approval_required: bool = False
    error: str | None = None  # on a deny: invalid_target (no such audience) or invalid_scope (no grant has it)
    require_dpop: bool = False  # the token must be bound to a key by a DPoP proof (RFC 9449)


DECISION_ERRORS = ("invalid_target", "invalid_scope")


@dataclass(frozen=True)
class Grant:
    scopes: tuple[str, ...]
    ttl: int


_last_rfc3339: tuple[int, str] = (0, "1970-01-01T00:00:00Z")


def rfc3339(ts: float) -> str:
    """UTC, whole seconds; the last one is remembered (issuances in the same second share it)."""
    global _last_rfc3339
    seconds = int(ts)
    last = _last_rfc3339
    if last[0] == seconds:
        return last[1]
    text = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_rfc3339 = (seconds, text)
    return text


def policy_input(subject: Subject, audience: str, scopes: Sequence[str], ttl_seconds: int | None,
                 now: float, client_ip: str | None, approval: dict[str, Any] | None = None,
                 dpop_jkt: str | None = None) -> dict[str, Any]:
    """The `input` document of docs/contract.md §3, exactly; `request.dpop` is `{"jkt"}` of a
    valid DPoP proof sent with the request, else null."""
    pod: dict[str, Any] | None = None
    if subject.pod is not None:
        pod = {"name": subject.pod.name, "uid": subject.pod.uid,
               "labels": dict(subject.pod.labels), "images": list(subject.pod.images)}
    return {
        "subject": {
            "sub": subject.sub,
            "issuer": subject.issuer,
            "namespace": subject.namespace,
            "service_account": subject.service_account,
            "pod": pod,
        },
        "request": {"audience": audience, "scopes": list(scopes), "ttl_seconds": ttl_seconds,
                    "dpop": None if dpop_jkt is None else {"jkt": dpop_jkt}},
        "context": {"time": rfc3339(now), "client_ip": client_ip},
        "approval": approval,
    }


def _string_list(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedDecision(f"decision.{key} must be a list of strings, got {value!r:.200}")
    return tuple(value)


def parse_decision(response: Any) -> Decision:
    """Read OPA's Data API answer (`{"result": {...}}`) strictly: `allow` a JSON bool,
    `scopes` and `reasons` lists of strings, `ttl_seconds` a positive integer (0 on a deny),
    `approval_required` and `require_dpop` bools, `error` absent or one of DECISION_ERRORS (read on a deny only).
    Absent optional fields take their empty value."""
    if not isinstance(response, dict) or "result" not in response:
        raise MalformedDecision("the decision is undefined (no policy at the policy path, or no rule matched)")
    doc = response["result"]
    if not isinstance(doc, dict):
        raise MalformedDecision(f"the decision must be an object, got {doc!r:.200}")
    allow = doc.get("allow")
    if not isinstance(allow, bool):
        raise MalformedDecision(f"decision.allow must be true or false, got {allow!r:.200}")
    ttl = doc.get("ttl_seconds")
    # A deny carries ttl_seconds 0 (the shipped policy always returns an int, docs/contract.md §3).
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < (1 if allow else 0)):
        raise MalformedDecision(f"decision.ttl_seconds must be a positive integer, got {ttl!r:.200}")
    approval = doc.get("approval_required", False)
    if not isinstance(approval, bool):
        raise MalformedDecision(f"decision.approval_required must be true or false, got {approval!r:.200}")
    require_dpop = doc.get("require_dpop", False)
    if not isinstance(require_dpop, bool):
        raise MalformedDecision(f"decision.require_dpop must be true or false, got {require_dpop!r:.200}")
    error = doc.get("error")
    if error is not None and error not in DECISION_ERRORS:
        raise MalformedDecision(f"decision.error must be one of {', '.join(DECISION_ERRORS)} or absent, "
                                f"got {error!r:.200}")
    return Decision(allow=allow, scopes=_string_list(doc, "scopes"), ttl_seconds=ttl,
                    reasons=_string_list(doc, "reasons"), approval_required=approval,
                    error=None if allow else error, require_dpop=require_dpop)


def grant(decision: Decision, requested_scopes: Sequence[str], requested_ttl: int | None,
          default_ttl: int, max_ttl: int) -> Grant:
    """Scopes: the policy's, never more than were requested. Lifetime: the shortest of
    the requested (or default) TTL, the policy's TTL and the broker's maximum."""
    allowed = set(decision.scopes)
    scopes = tuple(dict.fromkeys(s for s in requested_scopes if s in allowed))
    ttl = min(requested_ttl or default_ttl, max_ttl)
    if decision.ttl_seconds is not None:
        ttl = min(ttl, decision.ttl_seconds)
    return Grant(scopes=scopes, ttl=ttl)
