"""`jitmesh shadow replay`: the recorded policy inputs of the audit trail, re-evaluated
against a candidate policy directory that was never deployed, on an OPA of its own.

The audit trail is read through the broker's admin audit API (`GET /v1/admin/audit`,
paged by `after_seq`), the same way `jitmesh audit` reads it: an operator needs the
admin token only, not the store's credentials, and SQLite and PostgreSQL look alike.
Each decision record keeps the policy input (`details.input`) and the enforced raw
decision (`details.decision`, the `result` of OPA's answer); both go through the same
`pdp.shadow.compare` as live shadowing, with the record's decision id and time, so a
replay of the requests live shadowing saw classifies each of them the same way.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from pdp.opa import OPAClient, OPAUnavailable
from pdp.shadow.classify import Comparison, ShadowTally, compare

AUDIT_PAGE: Final = 1000
CONCURRENCY: Final = 8
CANDIDATE_TIMEOUT: Final = 5.0
_PACKAGE = re.compile(r"^\s*package\s+([\w.\"\[\]-]+)", re.MULTILINE)


class ReplayError(RuntimeError):
    """Replay cannot run: the candidate, the broker or the audit trail is not usable; says which."""


@dataclass(frozen=True)
class RecordedDecision:
    decision_id: str
    time: float
    subject: str
    audience: str
    policy_path: str | None
    policy_input: dict[str, Any]
    enforced_decision: Any
    compared: bool  # False: the enforced decision never came (OPA unreachable)


def recorded_decision(record: Mapping[str, Any]) -> RecordedDecision | None:
    """The policy decision an audit record (as the admin audit API returns it) holds, or
    None for records that are not policy decisions (attestation failures, revocations,
    admin actions): they carry no policy input."""
    details = record.get("details") or {}
    policy_input = details.get("input") if isinstance(details, Mapping) else None
    if not isinstance(policy_input, dict):
        return None
    # an `error` record with an input is either a policy error (a deny, compared) or OPA
    # unreachable (no enforced decision at all: nothing to compare)
    compared = not (record.get("event") == "error" and details.get("error") != "policy_error")
    return RecordedDecision(
        decision_id=str(record.get("decision_id", "")), time=float(record.get("time", 0.0)),
        subject=str(record.get("subject") or ""), audience=str(record.get("audience") or ""),
        policy_path=record.get("policy_path"), policy_input=policy_input,
        enforced_decision=details.get("decision"), compared=compared)


def rego_packages(directory: Path) -> set[str]:
    """The packages the .rego files under `directory` declare (tests excluded)."""
    found: set[str] = set()
    for f in directory.rglob("*.rego"):
        if f.name.endswith("_test.rego"):
            continue
        found.update(m.group(1) for m in _PACKAGE.finditer(f.read_text(errors="replace")))
    return found


def check_candidate(directory: Path, candidate_path: str) -> None:
    """ReplayError unless `directory` holds Rego that can define `candidate_path`."""
    if not directory.is_dir():
        raise ReplayError(f"--candidate {str(directory)!r}: no such directory; give the candidate policy's directory")
    packages = rego_packages(directory)
    if not packages:
        raise ReplayError(f"--candidate {str(directory)!r}: no .rego policy files in it")
    dotted = candidate_path.strip("/").replace("/", ".")
    if not any(dotted == p or dotted.startswith(p + ".") for p in packages):
        raise ReplayError(
            f"--candidate-path {candidate_path!r}: no policy in {str(directory)!r} can define it "
            f"(its packages: {', '.join(sorted(packages))}); pass the data path of the candidate's decision")


async def audit_decisions(client: httpx.AsyncClient, broker_url: str, *, since: float, until: float,
                          page: int = AUDIT_PAGE) -> AsyncIterator[list[RecordedDecision]]:
    """Pages of recorded decisions in [since, until], oldest first."""
    url = f"{broker_url.rstrip('/')}/v1/admin/audit"
    after: int | None = None
    while True:
        params: dict[str, Any] = {"since": since, "until": until, "limit": page}
        if after is not None:
            params["after_seq"] = after
        try:
            r = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise ReplayError(f"cannot reach the broker at {broker_url}: {type(exc).__name__}: {exc}") from None
        if r.status_code == 401:
            raise ReplayError("the broker refused the admin token: pass --admin-token-file with a token it lists")
        if r.status_code != 200:
            raise ReplayError(f"the broker's audit API answered HTTP {r.status_code}: {r.text[:300]}")
        doc = r.json()
        records = doc.get("records", []) if isinstance(doc, dict) else []
        decisions = [d for d in (recorded_decision(rec) for rec in records) if d is not None]
        if decisions:
            yield decisions
        if len(records) < page or doc.get("next_seq") is None:
            return
        after = int(doc["next_seq"])


async def evaluate(candidate: OPAClient, candidate_path: str, recorded: RecordedDecision) -> Comparison:
    decision: Any = None
    error: str | None = None
    try:
        raw = await asyncio.wait_for(candidate.query(candidate_path, recorded.policy_input), CANDIDATE_TIMEOUT)
    except TimeoutError:
        error = f"the candidate did not answer within {CANDIDATE_TIMEOUT:g}s"
    except OPAUnavailable as exc:
        error = str(exc)
    else:
        decision = raw.get("result")
    return compare(decision_id=recorded.decision_id, time=recorded.time, policy_input=recorded.policy_input,
                   enforced_decision=recorded.enforced_decision, candidate_decision=decision, candidate_error=error)


@dataclass
class ReplayProgress:
    records: int = 0
    compared: int = 0
    started: float = 0.0


async def replay(pages: AsyncIterator[list[RecordedDecision]], candidate: OPAClient, candidate_path: str,
                 tally: ShadowTally, *, concurrency: int = CONCURRENCY,
                 progress: Callable[[ReplayProgress], None] | None = None,
                 policy_paths: dict[str, int] | None = None) -> ReplayProgress:
    """Evaluate every recorded decision against the candidate and fold it into `tally`."""
    state = ReplayProgress(started=time.monotonic())
    gate = asyncio.Semaphore(concurrency)

    async def one(rec: RecordedDecision) -> None:
        async with gate:
            tally.add(await evaluate(candidate, candidate_path, rec))
            state.compared += 1

    async for decisions in pages:
        for rec in decisions:
            state.records += 1
            if policy_paths is not None and rec.policy_path:
                policy_paths[rec.policy_path] = policy_paths.get(rec.policy_path, 0) + 1
            if not rec.compared:
                tally.add_not_compared(rec.time, rec.subject, rec.audience)
        await asyncio.gather(*(one(r) for r in decisions if r.compared))
        if progress is not None:
            progress(state)
    return state
