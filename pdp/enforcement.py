"""Dry-run enforcement (`jitmesh broker --enforcement dry-run`): what is issued for a
request the policy denied while a workload is being onboarded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pdp.decision import Decision

DRY_RUN_EVENT: Final = "dry_run_allowed"


def dry_run_decision(denied: Decision, requested_scopes: Sequence[str]) -> Decision:
    """What dry-run issues for a request the policy denied: the requested scopes, the
    broker's default and maximum TTL, and the policy's reasons kept for the audit record.

    Only a well-formed denial (`allow: false`) is issued anyway. Attestation failures,
    revoked subjects, pods and audiences, policy errors (undefined or malformed
    decisions), approvals pending, OPA outages and denials that name an `error` (an
    unknown audience, a scope no grant has) are refused in dry-run as in enforce: dry-run
    relaxes the policy's verdict, never who is asking, what exists, or whether it answered.
    """
    return Decision(allow=True, scopes=tuple(requested_scopes), ttl_seconds=None, reasons=denied.reasons)
