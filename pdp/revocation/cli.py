"""`jitmesh revoke` (docs/contract.md §1): revoke by `--jti`, `--subject`, `--pod-uid` or
`--audience` with a `--reason`, lift a revocation with `--lift ID`, or `--list` the active
ones, at `--broker-url` with an admin token from `--admin-token-file`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pdp.client import add_admin_client_flags, admin_request

TARGETS = (("jti", "jti"), ("subject", "subject"), ("pod_uid", "pod-uid"), ("audience", "audience"))


def _line(doc: dict[str, Any]) -> str:
    state = "active" if doc.get("lifted_at") is None else f"lifted by {doc.get('lifted_by')}"
    return (f"{doc['id']}  {doc['kind']}={doc['value']}  {state}  by {doc.get('created_by')}: "
            f"{doc.get('reason', '')}")


def request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None] | str:
    """(method, path, JSON body) of what was asked, or the usage error."""
    chosen = [(key, getattr(args, key)) for key, _ in TARGETS if getattr(args, key) is not None]
    if args.list:
        if chosen or args.lift:
            return "--list takes no target and no --lift"
        return "GET", "/v1/admin/revocations", None
    if args.lift:
        if chosen:
            return "--lift ID takes no target: it lifts the revocation with that id"
        return "DELETE", f"/v1/admin/revocations/{args.lift}", None
    if len(chosen) != 1:
        return "exactly one of --jti, --subject, --pod-uid, --audience is required (or --lift ID, or --list)"
    if not args.reason or not args.reason.strip():
        return "--reason is required: say why, it goes into the audit trail"
    key, value = chosen[0]
    return "POST", "/v1/admin/revocations", {key: value, "reason": args.reason}


def run_revoke(args: argparse.Namespace) -> int:
    asked = request_for(args)
    if isinstance(asked, str):
        print(f"jitmesh revoke: {asked}", file=sys.stderr)
        return 2
    method, path, body = asked
    doc = admin_request("jitmesh revoke", args.broker_url, args.admin_token_file, method, path, body, ok=(200, 201))
    if isinstance(doc, int):
        return doc
    if args.json:
        print(json.dumps(doc, indent=2))
    elif method == "GET":
        for item in doc["revocations"]:
            print(_line(item))
    else:
        print(_line(doc))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("revoke", help="revoke tokens by jti, subject, pod uid or audience; lift or list revocations")
    add_admin_client_flags(p)
    p.add_argument("--jti", default=None, help="one token, by its jti")
    p.add_argument("--subject", default=None, help="every token of system:serviceaccount:<ns>:<sa>; refuses new ones")
    p.add_argument("--pod-uid", dest="pod_uid", default=None, help="every token of one pod; refuses new ones")
    p.add_argument("--audience", default=None, help="every token for one audience; refuses new ones")
    p.add_argument("--reason", default=None, help="why (required when revoking)")
    p.add_argument("--lift", default=None, metavar="ID", help="lift the revocation with this id")
    p.add_argument("--list", action="store_true", help="list the active revocations")
    p.add_argument("--json", action="store_true", help="print the broker's JSON answer")
    p.set_defaults(func=run_revoke)
