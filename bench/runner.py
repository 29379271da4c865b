"""`python -m bench [SECTION ...]`: run the chosen sections (all by default), each on its
own, print one table of figures beside their baselines and aims, and keep the JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import Context, Options
from bench.report import SectionResult, load_previous, render_table, results_document, unavailable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


Section = Callable[[Context], SectionResult]


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    run: Section
    in_all: bool = True


def sections() -> list[SectionSpec]:
    from bench import (
        cluster_section,
        dblogins,
        injector_section,
        issuance,
        latency_section,
        profile,
        proxy_section,
        revocation,
        sidecar_section,
        strangers,
    )
    return [
        SectionSpec("issuance", issuance.TITLE, issuance.run_sqlite),
        SectionSpec("postgres", issuance.PG_TITLE, issuance.run_postgres),
        SectionSpec("shadow", issuance.SHADOW_TITLE, issuance.run_shadow),
        SectionSpec("strangers", strangers.TITLE, strangers.run),
        SectionSpec("profile", profile.TITLE, profile.run, in_all=False),
        SectionSpec("sidecar", sidecar_section.TITLE, sidecar_section.run),
        SectionSpec("webhook", injector_section.TITLE, injector_section.run),
        SectionSpec("revocation", revocation.TITLE, revocation.run),
        SectionSpec("proxy", proxy_section.TITLE, proxy_section.run),
        SectionSpec("latency", latency_section.TITLE, latency_section.run),
        SectionSpec("cluster", cluster_section.TITLE, cluster_section.run),
        SectionSpec("dblogins", dblogins.TITLE, dblogins.run),
    ]


def run_section(spec: SectionSpec, ctx: Context) -> SectionResult:
    """A section that fails says why; it never stops the others."""
    started = time.monotonic()
    ctx.say(f"== {spec.title}")
    try:
        result = spec.run(ctx)
    except Exception as exc:
        detail = traceback.format_exc(limit=3) if os.environ.get("BENCH_DEBUG") else ""
        result = unavailable(spec.key, spec.title, f"{type(exc).__name__}: {exc}".strip() + detail)
    result.raw.setdefault("seconds", round(time.monotonic() - started, 1))
    result.raw.setdefault("loadavg_1m_at_end", round(os.getloadavg()[0], 2))
    if result.unavailable:
        ctx.say(f"   not available: {result.unavailable.splitlines()[0] if result.unavailable else ''}")
    return result


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def parse_args(argv: Sequence[str] | None, specs: Sequence[SectionSpec]) -> argparse.Namespace:
    names = [s.key for s in specs]
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "jitmesh benchmarks on real processes on 127.0.0.1. Sections: " + ", ".join(names)
        + ". Without a section, all but `profile` run (profile also runs when issuance misses its aim)."))
    parser.add_argument("sections", nargs="*", metavar="SECTION", default=[])
    parser.add_argument("--duration", type=float, default=Options.duration, help="seconds measured per load run")
    parser.add_argument("--warmup", type=float, default=Options.warmup, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=Options.connections, help="concurrent clients")
    parser.add_argument("--sidecars", type=int, default=Options.sidecars, help="sidecars in the revocation run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (process logs)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in names]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}: choose from {', '.join(names)}")
    return args


def _stop_on_signal(signum: int, frame: object) -> None:
    # the processes under test run in sessions of their own: unwinding stops them, dying would orphan them
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    specs = sections()
    args = parse_args(argv, specs)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    chosen = list(dict.fromkeys(args.sections)) or [s.key for s in specs if s.in_all]
    options = Options(duration=args.duration, warmup=args.warmup, connections=args.connections,
                      sidecars=args.sidecars, keep=args.keep)
    scratch = Path(tempfile.mkdtemp(prefix="jitmesh-bench-"))
    ctx = Context(options=options, workdir=scratch)
    info = machine()
    ctx.say(f"{info['cpus']} CPUs, load average {info['loadavg_at_start']}; scratch {scratch}")
    results: list[SectionResult] = []
    by_key = {s.key: s for s in specs}
    try:
        for key in chosen:
            results.append(run_section(by_key[key], ctx))
            if key == "issuance" and "profile" not in chosen and ctx.shared.get("issuance_missed_aim"):
                ctx.say("issuance is below its aim: profiling the broker to show where the time goes")
                results.append(run_section(by_key["profile"], ctx))
    finally:
        if not options.keep:
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)
    previous = load_previous(args.results_dir)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(render_table(results, previous))
    print(f"\nmachine: {info['cpus']} CPUs, load average {info['loadavg_at_start'][0]} when the bench started "
          "(well above 0 means other work shared the CPUs and moved the figures; CPU per issuance and the "
          "CPU-bound ceiling move least)")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results_document(results, info), indent=2))
    print(f"\nresults: {out}" + (f"; process logs kept in {scratch}" if options.keep else ""))
    return 0
