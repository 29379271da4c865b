"""`jitmesh policy test|check|fmt`: `opa test`, `opa check --strict` and `opa fmt` on policy
directories, with one exit-code rule for all three: 0 clean, 1 something to fix (named), 2 the
command could not run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from jitmesh.opa_server import OPANotFound, find_opa

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def _say(verb: str, text: str) -> None:
    print(f"jitmesh policy {verb}: {text}", file=sys.stderr)


def _test(opa: str, args: argparse.Namespace) -> int:
    p = subprocess.run([opa, "test", "--format", "json", *args.dirs], capture_output=True, text=True)
    try:
        results = json.loads(p.stdout)
    except ValueError:
        results = None
    if not isinstance(results, list):  # OPA could not load the policies: its errors say why
        sys.stderr.write(p.stderr or p.stdout)
        _say("test", f"the policies in {' '.join(args.dirs)} could not be loaded (errors above)")
        return EXIT_FINDINGS
    if not results:
        _say("test", f"no tests found in {' '.join(args.dirs)}: a test is a rule named test_* "
             "(conventionally in a *_test.rego file beside the policy)")
        return EXIT_FINDINGS
    failed = 0
    for r in results:
        where = f"{r.get('location', {}).get('file')}:{r.get('location', {}).get('row')}"
        name = f"{r.get('package')}.{r.get('name')}"
        if r.get("error"):
            failed += 1
            print(f"ERROR {name} ({where}): {r['error'].get('message', r['error'])}")
        elif r.get("fail"):
            failed += 1
            print(f"FAIL {name} ({where})")
        elif args.verbose:
            print(f"PASS {name} ({where})")
    print(f"PASS: {len(results) - failed}/{len(results)}" + (f"\nFAIL: {failed}/{len(results)}" if failed else ""))
    return EXIT_FINDINGS if failed else EXIT_OK


def _fmt(opa: str, args: argparse.Namespace) -> int:
    p = subprocess.run([opa, "fmt", "--write" if args.write else "--list", *args.dirs],
                       capture_output=True, text=True)
    changed = [line for line in p.stdout.splitlines() if line.strip()]
    if p.stderr.strip():  # files OPA could not parse, each named with its error
        sys.stderr.write(p.stderr)
        _say("fmt", "some files could not be parsed (errors above); nothing was changed in them")
    if changed and not args.write:
        print("\n".join(changed))
        _say("fmt", f"{len(changed)} file(s) above are not opa-fmt clean; "
             f"`jitmesh policy fmt --write {' '.join(args.dirs)}` rewrites them")
    elif changed:
        print("\n".join(changed))
    if p.stderr.strip() or (changed and not args.write):
        return EXIT_FINDINGS
    return EXIT_OK if p.returncode in (0, 2) or args.write else EXIT_FINDINGS


def _check(opa: str, args: argparse.Namespace) -> int:
    p = subprocess.run([opa, "check", "--strict", *args.dirs])
    return EXIT_OK if p.returncode == 0 else EXIT_FINDINGS


def _run(args: argparse.Namespace) -> int:
    try:
        opa = find_opa(args.opa_bin)
    except OPANotFound as exc:
        _say(args.policy_command, str(exc))
        return EXIT_USAGE
    command = {"test": _test, "check": _check, "fmt": _fmt}[args.policy_command]
    return command(opa, args)


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="test, check or format Rego policies with OPA")
    psub = p.add_subparsers(dest="policy_command", metavar="VERB", required=True)
    for verb, text in (("test", "run the policies' tests (`opa test`); exit 1 on a failure or when there is "
                                "no test at all"),
                       ("check", "run `opa check --strict` on the policy directories; exit 1 on an error"),
                       ("fmt", "list files `opa fmt` would change and files that do not parse (exit 1 if "
                               "any); --write rewrites them")):
        v = psub.add_parser(verb, help=text, description=text)
        v.add_argument("dirs", nargs="*", default=["policies"], help="policy directories (default: policies)")
        v.add_argument("--opa-bin", default=None, help="path to the opa binary")
        if verb == "test":
            v.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
        if verb == "fmt":
            v.add_argument("--write", action="store_true", help="rewrite files in place")
        v.set_defaults(func=_run)
