"""Subcommands served by the broker package: `broker` (the server), and the clients
`token` (an operator asks for a token by hand) and `audit` (query or follow the trail)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from jitmesh.contract import AUDIT_EVENTS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, check_audit_event
from jitmesh.log import configure, get_logger
from pdp.approvals import cli as approvals_cli
from pdp.client import AdminTokenFileError, add_admin_client_flags, admin_headers, error_text
from pdp.config import BrokerConfig, ConfigError, add_broker_flags
from pdp.revocation import cli as revoke_cli
from pdp.shadow import cli as shadow_cli
from pdp.store import open_store_from_url
from pdp.store.base import StoreError
from pdp.when import parse_since, parse_when, rfc3339

log = get_logger("pdp")


# --- jitmesh broker -------------------------------------------------------------------------

def run_broker(args: argparse.Namespace) -> int:
    configure(args.log_level)
    try:
        config = BrokerConfig.from_args(args)
    except ConfigError as exc:
        print(f"jitmesh broker: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from pdp.app import create_app
    from pdp.http.server import uvicorn_config

    try:
        asyncio.run(_check_store(config.store_url))
    except StoreError as exc:
        print(f"jitmesh broker: --store: {exc}", file=sys.stderr)
        return 1
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))
    app.state.uvicorn_server = server  # event streams end when it shuts down (pdp/revocation/events.py)
    server.run()
    # uvicorn leaves `started` False when the lifespan (store, keys) failed
    return 0 if server.started else 1


async def _check_store(url: str) -> None:
    """Open the store once before serving, so a bad --store is one clear line, not a traceback."""
    store = open_store_from_url(url)
    await store.open()
    await store.close()


# --- client helpers ---------------------------------------------------------------------

# --- jitmesh token ----------------------------------------------------------------------

def run_token(args: argparse.Namespace) -> int:
    try:
        subject_token = Path(args.subject_token_file).read_text().strip()
    except OSError as exc:
        print(f"jitmesh token: cannot read --subject-token-file: {exc}", file=sys.stderr)
        return 2
    form = {"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
            "subject_token_type": TOKEN_TYPE_JWT, "audience": args.audience}
    if args.scope:
        form["scope"] = " ".join(s for part in args.scope for s in part.split())
    if args.ttl is not None:
        form["requested_ttl"] = str(args.ttl)
    try:
        r = httpx.post(f"{args.broker_url.rstrip('/')}/token", data=form, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"jitmesh token: cannot reach the broker at {args.broker_url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"jitmesh token: refused: {error_text(r)}", file=sys.stderr)
        pending = _json_or_empty(r)
        if pending.get("error") == "authorization_pending" and pending.get("access_request_id"):
            rid = pending["access_request_id"]
            print(f"jitmesh token: access request {rid} waits for a human approval. An approver runs:\n\n"
                  f"  jitmesh approvals --broker-url {args.broker_url} --approve {rid}\n\n"
                  f"then ask again with the same command (every {pending.get('interval', 5)} s is enough).",
                  file=sys.stderr)
        return 1
    doc = r.json()
    print(json.dumps(doc, indent=2) if args.json else doc["access_token"])
    return 0


def _json_or_empty(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


# --- jitmesh audit ----------------------------------------------------------------------

def _format_record(rec: dict[str, Any]) -> str:
    ts = rfc3339(rec["time"])
    d = rec.get("details") or {}
    head = f"{rec.get('seq', ''):>6} {ts} {rec['event']:<8}"
    if d.get("action"):  # what an admin did, and to whom or what
        target = " ".join(f"{k}={v}" for k, v in (("subject", rec.get("subject")), ("audience", rec.get("audience")),
                                                   ("jti", rec.get("jti")), ("path", d.get("path"))) if v)
        return f"{head} {d['action']} by {d.get('actor') or '-'} {target}".rstrip()
    scopes = d.get("granted_scopes") if rec["event"] == "issued" else d.get("requested_scopes")
    why = "; ".join(d.get("reasons") or []) or d.get("error_description") or ""
    ttl = f" ttl={d['ttl']}s" if d.get("ttl") is not None else ""
    return (f"{head} {rec.get('subject') or '-'} -> {rec.get('audience') or '-'} [{' '.join(scopes or [])}]{ttl} "
            f"decision={rec['decision_id']} {why}").rstrip()


def run_audit(args: argparse.Namespace) -> int:
    try:
        headers = admin_headers(args.admin_token_file)
    except AdminTokenFileError as exc:
        print(f"jitmesh audit: {exc}", file=sys.stderr)
        return 2
    params: dict[str, Any] = {"limit": args.limit}
    now = time.time()
    try:
        if args.event:
            check_audit_event(args.event, "--event")
        if args.since:
            params["since"] = parse_since(args.since, "--since", now)
        elif args.follow:
            params["since"] = now  # follow from now on, not from the start of the trail
        if args.until:
            params["until"] = parse_when(args.until, "--until", now)
    except ValueError as exc:
        print(f"jitmesh audit: {exc}", file=sys.stderr)
        return 2
    for name in ("subject", "event", "audience"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    url = f"{args.broker_url.rstrip('/')}/v1/admin/audit"
    deadline = None if args.follow_seconds is None else time.monotonic() + args.follow_seconds
    with httpx.Client(timeout=10.0, headers=headers) as client:
        while True:
            try:
                r = client.get(url, params=params)
            except httpx.HTTPError as exc:
                print(f"jitmesh audit: cannot reach the broker at {args.broker_url}: {exc}", file=sys.stderr)
                return 1
            if r.status_code != 200:
                print(f"jitmesh audit: {error_text(r)}", file=sys.stderr)
                return 1
            doc = r.json()
            for rec in doc["records"]:
                print(json.dumps(rec) if args.json else _format_record(rec), flush=True)
            if not args.follow or (deadline is not None and time.monotonic() >= deadline):
                return 0
            if doc.get("next_seq") is not None:
                params["after_seq"] = doc["next_seq"]
            if len(doc["records"]) < args.limit:
                time.sleep(args.interval)


# --- registration -----------------------------------------------------------------------

def register(sub: Any) -> None:
    b = sub.add_parser("broker", help="run the broker (PDP + token service)")
    add_broker_flags(b)
    b.set_defaults(func=run_broker)

    t = sub.add_parser("token", help="ask the broker for a token by hand")
    t.add_argument("--broker-url", default="http://127.0.0.1:8080", help="broker base URL (default %(default)s)")
    t.add_argument("--audience", required=True, help="the one audience of the token")
    t.add_argument("--scope", action="append", default=[], help="scope(s) to ask for; repeatable")
    t.add_argument("--subject-token-file", required=True,
                   help="a ServiceAccount token, e.g. from `kubectl create token SA --audience jitmesh`")
    t.add_argument("--ttl", type=int, default=None, help="requested lifetime in seconds")
    t.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    t.set_defaults(func=run_token)

    a = sub.add_parser("audit", help="query or follow the broker's audit trail")
    add_admin_client_flags(a)
    a.add_argument("--since", default=None,
                   help="from this time: a duration back from now (15m, 1h, 7d), RFC 3339, or unix seconds "
                        "(default: the start of the trail; with --follow, now)")
    a.add_argument("--until", default=None, help="up to this time, in the same forms as --since")
    a.add_argument("--subject", default=None, help="e.g. system:serviceaccount:demo:demo-app")
    a.add_argument("--event", default=None, help=", ".join(AUDIT_EVENTS))
    a.add_argument("--audience", default=None)
    a.add_argument("--limit", type=int, default=100, help="records per query (1-1000)")
    a.add_argument("--json", action="store_true", help="one JSON record a line")
    a.add_argument("--follow", action="store_true", help="keep polling for new records")
    a.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")
    a.add_argument("--follow-seconds", type=float, default=None, help=argparse.SUPPRESS)
    a.set_defaults(func=run_audit)

    shadow_cli.register(sub)  # `shadow report`, `shadow replay` (pdp/shadow/cli.py)
    revoke_cli.register(sub)  # `revoke` (pdp/revocation/cli.py)
    approvals_cli.register(sub)  # `approvals` (pdp/approvals/cli.py)
