"""`jitmesh policy test|check|fmt`: `opa test`, `opa check --strict` and `opa fmt` on a policy directory."""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

from jitmesh.opa_server import OPANotFound, find_opa


def _run(args: argparse.Namespace) -> int:
    try:
        opa = find_opa(args.opa_bin)
    except OPANotFound as exc:
        print(f"jitmesh policy: {exc}")
        return 2
    argv: list[str]
    if args.policy_command == "test":
        argv = [opa, "test", *(["-v"] if args.verbose else []), *args.dirs]
    elif args.policy_command == "check":
        argv = [opa, "check", "--strict", *args.dirs]
    else:
        argv = [opa, "fmt", *(["--write"] if args.write else ["--list", "--fail"]), *args.dirs]
    return subprocess.call(argv)


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="test, check or format Rego policies with OPA")
    psub = p.add_subparsers(dest="policy_command", metavar="VERB", required=True)
    for verb, text in (("test", "run `opa test` on the policy directories"),
                       ("check", "run `opa check --strict` on the policy directories"),
                       ("fmt", "list files `opa fmt` would change (exit 1 if any); --write rewrites them")):
        v = psub.add_parser(verb, help=text)
        v.add_argument("dirs", nargs="*", default=["policies"], help="policy directories (default: policies)")
        v.add_argument("--opa-bin", default=None, help="path to the opa binary")
        if verb == "test":
            v.add_argument("-v", "--verbose", action="store_true")
        if verb == "fmt":
            v.add_argument("--write", action="store_true", help="rewrite files in place")
        v.set_defaults(func=_run)
