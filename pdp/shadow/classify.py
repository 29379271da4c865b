"""Shadow mode (docs/contract.md §6): what a candidate policy would have decided, beside what
the enforced policy did decide, classified per request.

Everything here is a pure function of data. The broker's live shadowing
(`pdp/shadow/live.py`) and `jitmesh shadow replay` (`pdp/shadow/replay.py`) both feed
`compare()`, so the two always classify the same request the same way.

Classes, for one request:

- `agree`: same verdict and, when both allow, the same scopes and TTL;
  two denials agree whatever their reasons.
- `allow_to_deny`: the enforced policy allowed, the candidate would deny
  (promoting it would break a workload).
- `deny_to_allow`: the enforced policy denied, the candidate would allow
  (a security finding).
- `narrower`: both allow; the candidate grants a subset of the scopes and/or a
  shorter TTL, and nothing more.
- `wider`: both allow; the candidate grants at least one scope the enforced
  policy did not, or a longer TTL. A mixed change (fewer scopes but a longer TTL,
  or scopes neither a subset nor a superset) is `wider`: it is a potential escalation.
- `candidate_error`: the candidate's decision is undefined or malformed, its query
  failed, or it did not answer in time.

What is compared is the grant the broker would issue from each decision: the
policy's scopes limited to the requested ones, and the policy's TTL limited to the
requested TTL. The broker's `--max-ttl` is not applied: it caps both sides alike,
and a difference it hides today is still a difference in the policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pdp.decision import MalformedDecision, parse_decision
from pdp.store.shadow import ShadowCount, ShadowSample, bucket_of

ShadowClass = Literal["agree", "allow_to_deny", "deny_to_allow", "narrower", "wider", "candidate_error"]
SHADOW_CLASSES: Final[tuple[ShadowClass, ...]] = (
    "agree", "allow_to_deny", "deny_to_allow", "narrower", "wider", "candidate_error",
)
EnforcedVerdict = Literal["allow", "deny"]
CandidateVerdict = Literal["allow", "deny", "error"]
ENFORCED_VERDICTS: Final[tuple[EnforcedVerdict, ...]] = ("allow", "deny")
CANDIDATE_VERDICTS: Final[tuple[CandidateVerdict, ...]] = ("allow", "deny", "error")


@dataclass(frozen=True)
class Grant:
    """What a decision would let the broker issue for one request."""

    allow: bool
    scopes: frozenset[str] = frozenset()
    ttl_seconds: int | None = None  # None: the policy set no TTL and none was requested

    @property
    def verdict(self) -> EnforcedVerdict:
        return "allow" if self.allow else "deny"


DENY: Final = Grant(allow=False)


def grant_of(decision: object, requested_scopes: Sequence[str], requested_ttl: int | None) -> Grant:
    """The grant a decision document (the `result` of OPA's Data API) makes for a request.

    The document is read exactly as the broker reads it (`pdp.decision.parse_decision`);
    MalformedDecision when it is undefined (None) or not shaped as in docs/contract.md §3.
    """
    if decision is None:
        raise MalformedDecision("decision is undefined")
    parsed = parse_decision({"result": decision})
    if not parsed.allow:
        return DENY
    granted = frozenset(parsed.scopes) & frozenset(requested_scopes)
    limits = [t for t in (parsed.ttl_seconds, requested_ttl) if t is not None]
    return Grant(allow=True, scopes=granted, ttl_seconds=min(limits) if limits else None)


def _ttl_order(ttl: int | None) -> float:
    # No TTL from the policy nor the request: the broker's default applies, unbounded by policy.
    return float("inf") if ttl is None else float(ttl)


def classify(enforced: Grant, candidate: Grant | None) -> ShadowClass:
    """The class of one comparison; `candidate` None means the candidate errored."""
    if candidate is None:
        return "candidate_error"
    if enforced.allow and not candidate.allow:
        return "allow_to_deny"
    if not enforced.allow and candidate.allow:
        return "deny_to_allow"
    if not enforced.allow:
        return "agree"
    wider = not candidate.scopes <= enforced.scopes or _ttl_order(candidate.ttl_seconds) > _ttl_order(
        enforced.ttl_seconds)
    if wider:
        return "wider"
    narrower = candidate.scopes < enforced.scopes or _ttl_order(candidate.ttl_seconds) < _ttl_order(
        enforced.ttl_seconds)
    return "narrower" if narrower else "agree"


@dataclass(frozen=True)
class Comparison:
    """One request seen by both policies. `enforced_decision` and `candidate_decision`
    are the raw decision documents (None when undefined)."""

    decision_id: str
    time: float
    subject: str
    audience: str
    shadow_class: ShadowClass
    enforced: EnforcedVerdict
    candidate: CandidateVerdict
    enforced_decision: Any = None
    candidate_decision: Any = None
    candidate_error: str | None = None


def compare(*, decision_id: str, time: float, policy_input: Mapping[str, Any], enforced_decision: object,
            candidate_decision: object, candidate_error: str | None = None) -> Comparison:
    """Classify one request from its policy input and both raw decisions.

    An enforced decision that is undefined or malformed is a denial, as the broker
    treats it. `candidate_error` (the query failed or timed out) makes the comparison a
    `candidate_error` whatever `candidate_decision` holds.
    """
    subject_doc = policy_input.get("subject") or {}
    request = policy_input.get("request") or {}
    subject = str(subject_doc.get("sub", "")) if isinstance(subject_doc, Mapping) else ""
    audience = str(request.get("audience", "")) if isinstance(request, Mapping) else ""
    scopes_raw = request.get("scopes") if isinstance(request, Mapping) else None
    scopes = [s for s in scopes_raw if isinstance(s, str)] if isinstance(scopes_raw, list) else []
    ttl_raw = request.get("ttl_seconds") if isinstance(request, Mapping) else None
    requested_ttl = ttl_raw if isinstance(ttl_raw, int) and not isinstance(ttl_raw, bool) else None

    try:
        enforced = grant_of(enforced_decision, scopes, requested_ttl)
    except MalformedDecision:
        enforced = DENY
    candidate: Grant | None = None
    error = candidate_error
    if error is None:
        try:
            candidate = grant_of(candidate_decision, scopes, requested_ttl)
        except MalformedDecision as exc:
            error = str(exc)
    return Comparison(
        decision_id=decision_id, time=time, subject=subject, audience=audience,
        shadow_class=classify(enforced, candidate), enforced=enforced.verdict,
        candidate="error" if candidate is None else candidate.verdict,
        enforced_decision=enforced_decision, candidate_decision=candidate_decision, candidate_error=error,
    )


# --- what the store keeps: bounded aggregates plus a few examples -----------------------

NOT_COMPARED: Final = "not_compared"  # a request seen whose enforced decision never came (OPA down)

def sample_of(c: Comparison) -> ShadowSample:
    """The stored example of one comparison."""
    return ShadowSample(bucket=bucket_of(c.time), shadow_class=c.shadow_class, decision_id=c.decision_id,
                        time=c.time, subject=c.subject, audience=c.audience, enforced_decision=c.enforced_decision,
                        candidate_decision=c.candidate_decision, candidate_error=c.candidate_error)


DEFAULT_SAMPLES_PER_CLASS: Final = 5


class ShadowTally:
    """Comparisons folded into ShadowCount rows and a bounded set of samples, in memory.
    The broker drains it into the store every few seconds; replay reports from it directly."""

    def __init__(self, samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS) -> None:
        self.samples_per_class = samples_per_class
        self._counts: dict[tuple[int, str, str, str, str, str], int] = {}
        self._samples: dict[tuple[int, str], list[ShadowSample]] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, c: Comparison) -> None:
        bucket = bucket_of(c.time)
        key = (bucket, c.shadow_class, c.enforced, c.candidate, c.subject, c.audience)
        self._counts[key] = self._counts.get(key, 0) + 1
        kept = self._samples.setdefault((bucket, c.shadow_class), [])
        if len(kept) < self.samples_per_class:
            kept.append(sample_of(c))

    def add_not_compared(self, time: float, subject: str, audience: str) -> None:
        key = (bucket_of(time), NOT_COMPARED, "", "", subject, audience)
        self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> list[ShadowCount]:
        return [ShadowCount(*key, count=n) for key, n in self._counts.items()]

    def samples(self) -> list[ShadowSample]:
        return [s for kept in self._samples.values() for s in kept]

    def restore(self, counts: list[ShadowCount], samples: list[ShadowSample]) -> None:
        """Put back what `drain` returned (its write failed), merged with what came since."""
        for c in counts:
            key = (c.bucket, c.shadow_class, c.enforced, c.candidate, c.subject, c.audience)
            self._counts[key] = self._counts.get(key, 0) + c.count
        for s in samples:
            kept = self._samples.setdefault((s.bucket, s.shadow_class), [])
            if len(kept) < self.samples_per_class:
                kept.append(s)

    def drain(self) -> tuple[list[ShadowCount], list[ShadowSample]]:
        out = self.counts(), self.samples()
        self._counts.clear()
        self._samples.clear()
        return out
