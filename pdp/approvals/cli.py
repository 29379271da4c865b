"""`jitmesh approvals`: list the access requests waiting for a human (default), or
`--approve ID` / `--deny ID --reason ...` one of them, at `--broker-url` with an admin token
from `--admin-token-file` (pdp/approvals/api.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pdp.client import add_admin_client_flags, admin_request

STATUSES = ("pending", "approved", "denied")


def _line(doc: dict[str, Any]) -> str:
    scopes = " ".join(doc.get("scopes") or []) or "(no scopes)"
    head = f"{doc['id']}  {doc['status']}  {doc['subject']} -> {doc['audience']} [{scopes}]"
    if doc["status"] == "pending":
        return f"{head}  asked {doc['created_at']}, lapses {doc['expires_at']}"
    reason = f": {doc['reason']}" if doc.get("reason") else ""
    return f"{head}  by {doc.get('decided_by')} at {doc.get('decided_at')}, until {doc['expires_at']}{reason}"


def request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None] | str:
    """(method, path, JSON body) of what was asked, or the usage error."""
    if args.approve and args.deny:
        return "--approve and --deny exclude each other"
    target = args.approve or args.deny
    if target:
        if args.status:
            return "--status only goes with listing, not with --approve or --deny"
        if args.deny and not (args.reason or "").strip():
            return "--reason is required with --deny: say why, the workload and the audit trail get it"
        verb = "approve" if args.approve else "deny"
        body = {"reason": args.reason} if args.reason else {}
        return "POST", f"/v1/admin/access-requests/{target}/{verb}", body
    if args.reason:
        return "--reason only goes with --approve or --deny"
    status = args.status or "pending"
    if status not in (*STATUSES, "all"):
        return f"--status {status!r}: expected one of {', '.join(STATUSES)} or all"
    query = "" if status == "all" else f"?status={status}"
    return "GET", f"/v1/admin/access-requests{query}", None


def run_approvals(args: argparse.Namespace) -> int:
    asked = request_for(args)
    if isinstance(asked, str):
        print(f"jitmesh approvals: {asked}", file=sys.stderr)
        return 2
    method, path, body = asked
    doc = admin_request("jitmesh approvals", args.broker_url, args.admin_token_file, method, path, body)
    if isinstance(doc, int):
        return doc
    if args.json:
        print(json.dumps(doc, indent=2))
    elif method == "GET":
        for item in doc["access_requests"]:
            print(_line(item))
        if not doc["access_requests"]:
            print(f"no {args.status or 'pending'} access requests", file=sys.stderr)
    else:
        print(_line(doc))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list access requests waiting for a human; approve or deny one")
    add_admin_client_flags(p)
    p.add_argument("--status", default=None, help="which to list: pending (default), approved, denied or all")
    p.add_argument("--approve", default=None, metavar="ID", help="approve the access request with this id")
    p.add_argument("--deny", default=None, metavar="ID", help="deny the access request with this id (needs --reason)")
    p.add_argument("--reason", default=None, help="why; required with --deny, e.g. a ticket with --approve")
    p.add_argument("--json", action="store_true", help="print the broker's JSON answer")
    p.set_defaults(func=run_approvals)
