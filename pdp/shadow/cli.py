"""`jitmesh shadow report` and `jitmesh shadow replay` (docs/contract.md §6).

Exit status: 0 the report was produced and no `--fail-on` class occurred; 1 a
`--fail-on` class occurred (a pipeline gate failed); 2 bad arguments; 3 the report
could not be produced (broker unreachable or refusing, candidate OPA failed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import httpx

from jitmesh.opa_server import OPANotFound, OPAServer
from pdp.client import AdminTokenFileError, add_admin_client_flags, admin_headers
from pdp.shadow.classify import ShadowTally
from pdp.shadow.report import (
    FORMATS,
    ReportArgumentError,
    build_report,
    check_report,
    failed_classes,
    parse_fail_on,
    parse_format,
    parse_since,
    parse_time,
    render,
    rfc3339,
)

if TYPE_CHECKING:
    from pdp.shadow.replay import ReplayProgress

EXIT_OK: Final = 0
EXIT_FAIL_ON: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
DEFAULT_BROKER_URL: Final = "http://127.0.0.1:8080"
DEFAULT_CANDIDATE_PATH: Final = "jitmesh/candidate/authz/decision"
DEFAULT_SINCE: Final = "24h"
PROGRESS_EVERY: Final = 2.0


def _window(args: argparse.Namespace, now: float) -> tuple[float, float]:
    since = parse_since(args.since, now)
    until = parse_time(args.until, "--until") if args.until else now
    if until <= since:
        raise ReportArgumentError(f"--until {args.until!r} is not after --since {args.since!r} ({rfc3339(since)})")
    return since, until


def _finish(doc: dict[str, Any], fmt: str, fail_on: tuple[str, ...], out: TextIO, prog: str) -> int:
    out.write(render(doc, fmt))
    out.flush()
    failed = failed_classes(doc, fail_on)
    if failed:
        counts = ", ".join(f"{doc['classes'][c]} {c}" for c in failed)
        print(f"{prog}: --fail-on: {counts} in this window", file=sys.stderr)
        return EXIT_FAIL_ON
    return EXIT_OK


# --- jitmesh shadow report ----------------------------------------------------------------

def run_report(args: argparse.Namespace) -> int:
    prog = "jitmesh shadow report"
    try:
        fmt = parse_format(args.format)
        fail_on = parse_fail_on(args.fail_on) if args.fail_on else ()
        since, until = _window(args, time.time())
        headers = admin_headers(args.admin_token_file)
    except (ReportArgumentError, AdminTokenFileError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url = f"{args.broker_url.rstrip('/')}/v1/admin/shadow/report"
    try:
        r = httpx.get(url, params={"since": rfc3339(since), "until": rfc3339(until)}, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        print(f"{prog}: cannot reach the broker at {args.broker_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if r.status_code == 401:
        print(f"{prog}: the broker refused: an admin token is required (--admin-token-file)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if r.status_code != 200:
        print(f"{prog}: the broker answered HTTP {r.status_code}: {r.text[:300]}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        doc = check_report(r.json())
    except (ValueError, ReportArgumentError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return _finish(doc, fmt, fail_on, sys.stdout, prog)


# --- jitmesh shadow replay ----------------------------------------------------------------

def _progress_printer(stream: TextIO, enabled: bool) -> Any:
    last = [0.0]

    def show(state: ReplayProgress) -> None:
        now = time.monotonic()
        if enabled and now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            rate = state.compared / max(now - state.started, 1e-6)
            print(f"replay: {state.records} records read, {state.compared} re-evaluated ({rate:.0f}/s)",
                  file=stream, flush=True)
    return show


async def _replay(args: argparse.Namespace, candidate_url: str, headers: dict[str, str], since: float,
                  until: float) -> tuple[ShadowTally, ReplayProgress, dict[str, int]]:
    from pdp.opa import OPAClient  # aiohttp: loaded only by the commands that query OPA
    from pdp.shadow.replay import audit_decisions, replay

    tally = ShadowTally()
    paths: dict[str, int] = {}
    candidate = OPAClient(candidate_url, timeout=5.0)
    try:
        async with httpx.AsyncClient(headers=headers, timeout=30.0) as client:
            state = await replay(audit_decisions(client, args.broker_url, since=since, until=until), candidate,
                                 args.candidate_path, tally, progress=_progress_printer(sys.stderr, args.progress),
                                 policy_paths=paths)
    finally:
        await candidate.close()
    return tally, state, paths


DATA_SUFFIXES = (".json", ".yaml", ".yml")


def default_data(candidate_dir: Path, prog: str) -> list[Path]:
    """The data a candidate is replayed with when no --data is given: none when the candidate
    directory has data of its own; else the enforced policy's `data.json` beside it (as
    `policies/data.json` is beside `policies/candidate/`), said on stderr; else a warning,
    since a candidate without the data the enforced policy had decides differently."""
    if any(p.suffix in DATA_SUFFIXES for p in candidate_dir.rglob("*") if p.is_file()):
        return []
    beside = candidate_dir.resolve().parent / "data.json"
    if beside.is_file():
        print(f"{prog}: no --data given: replaying with {beside}, the data beside the candidate directory",
              file=sys.stderr)
        return [beside]
    print(f"{prog}: WARNING: no --data given and {candidate_dir} has no data file: the candidate sees no "
          "data.jitmesh and will decide differently from live; pass the enforced policy's data with --data",
          file=sys.stderr)
    return []


def run_replay(args: argparse.Namespace) -> int:
    from pdp.shadow.replay import ReplayError, check_candidate

    prog = "jitmesh shadow replay"
    candidate_dir = Path(args.candidate)
    try:
        fmt = parse_format(args.format)
        fail_on = parse_fail_on(args.fail_on) if args.fail_on else ()
        since, until = _window(args, time.time())
        headers = admin_headers(args.admin_token_file)
        check_candidate(candidate_dir, args.candidate_path)
        for d in args.data:
            if not Path(d).exists():
                raise ReportArgumentError(f"--data {d!r}: no such file or directory")
    except (ReportArgumentError, AdminTokenFileError, ReplayError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    data = [Path(d) for d in args.data] or default_data(candidate_dir, prog)
    with tempfile.TemporaryDirectory(prefix="jitmesh-replay-") as tmp:
        try:
            opa = OPAServer([candidate_dir, *data], Path(tmp) / "opa.log", opa_bin=args.opa_bin).start()
        except (OPANotFound, RuntimeError) as exc:
            print(f"{prog}: cannot start OPA on the candidate: {exc}", file=sys.stderr)
            return EXIT_USAGE if "rego" in str(exc).lower() else EXIT_UNAVAILABLE
        try:
            tally, state, paths = asyncio.run(_replay(args, opa.url, headers, since, until))
        except ReplayError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            opa.stop()
    if args.progress:
        print(f"replay: done, {state.records} records read, {state.compared} re-evaluated", file=sys.stderr)
    enforced = max(paths, key=lambda p: paths[p]) if paths else None
    doc = build_report(tally.counts(), tally.samples(), source="replay", since=since, until=until,
                       enforced_policy=enforced, candidate_policy=f"{args.candidate_path} from {args.candidate}")
    return _finish(doc, fmt, fail_on, sys.stdout, prog)


# --- registration -------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser) -> None:
    add_admin_client_flags(p)
    p.add_argument("--since", default=DEFAULT_SINCE,
                   help="window start: a duration back from now (90s, 15m, 2h, 7d, 1h30m) or an RFC 3339 time "
                        "(default %(default)s)")
    p.add_argument("--until", default=None, help="window end, RFC 3339 (default: now)")
    p.add_argument("--format", default="table", help=f"{' | '.join(FORMATS)} (default %(default)s)")
    p.add_argument("--fail-on", default=None, metavar="CLASS[,CLASS]",
                   help="exit 1 when any of these classes occurred, e.g. deny_to_allow,candidate_error")


def register(sub: Any) -> None:
    s = sub.add_parser("shadow", help="shadow mode: compare a candidate policy with the enforced one",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = s.add_subparsers(dest="shadow_command", metavar="VERB", required=True)

    r = ssub.add_parser("report", help="summarise live shadow comparisons of a window (from the broker)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(r)
    r.set_defaults(func=run_report)

    p = ssub.add_parser("replay", help="re-evaluate recorded policy inputs against a candidate policy directory",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--candidate", required=True, help="directory of the candidate policy (never deployed)")
    p.add_argument("--candidate-path", default=DEFAULT_CANDIDATE_PATH,
                   help="data path of the candidate's decision (default %(default)s)")
    p.add_argument("--data", action="append", default=[],
                   help="data file or directory the candidate needs, e.g. policies/data.json; repeatable "
                        "(default: the candidate's own data, else the data.json beside its directory)")
    p.add_argument("--opa-bin", default=None, help="path to the opa binary")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="report progress on stderr every few seconds (default on)")
    p.set_defaults(func=run_replay)
