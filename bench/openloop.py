"""Open-loop latency: requests sent at a fixed rate whatever the answers take (vegeta), so a
slow answer cannot hold the next request back and hide itself. A closed-loop client (wrk's 32
connections) at saturation measures queueing: each client waits for its answer before asking
again, so its p99 is how long the queue is, not how long a request takes at a given load.

For each target: its capacity (vegeta with as many workers as wrk's clients, no rate limit),
then a fixed rate at 50% and at 90% of that capacity, with p50, p99 and p99.9 of every
request sent (failed ones count at the time they took).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import percentile
from bench.wrk import client_cpus

FRACTIONS = (0.5, 0.9)
CAPACITY_WORKERS = 32
TIMEOUT_S = 5


@dataclass(frozen=True)
class Target:
    """One vegeta target: a request sent again and again."""

    name: str
    method: str
    url: str
    headers: tuple[str, ...] = ()
    body: Path | None = None
    root_certs: Path | None = None  # the CA an https target's certificate chains to

    def text(self) -> str:
        """vegeta's http target format: the request line, headers, `@file` for the body."""
        lines = [f"{self.method} {self.url}", *self.headers]
        if self.body is not None:
            lines.append(f"@{self.body}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunSummary:
    """One attack: what was offered, what came back and how long it took."""

    offered_rate: float
    seconds: float
    requests: int
    ok: int
    p50_ms: float
    p99_ms: float
    p999_ms: float

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok_per_second": self.ok_per_second}


def parse_results_csv(text: str) -> tuple[list[float], int]:
    """`vegeta encode --to csv` -> (latency of each request in ms, how many answered 2xx with no
    error). Columns: timestamp, status code, latency in ns, bytes out, bytes in, error, ..."""
    latencies: list[float] = []
    ok = 0
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 6:
            continue
        try:
            code, latency_ns = int(row[1]), int(row[2])
        except ValueError:
            continue
        latencies.append(latency_ns / 1e6)
        if 200 <= code < 300 and not row[5]:
            ok += 1
    return latencies, ok


def summarize(latencies: Sequence[float], ok: int, offered_rate: float, seconds: float) -> RunSummary:
    if not latencies:
        raise RuntimeError("vegeta recorded no request")
    return RunSummary(offered_rate=offered_rate, seconds=seconds, requests=len(latencies), ok=ok,
                      p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                      p999_ms=percentile(latencies, 99.9))


def attack(vegeta: str, target: Target, seconds: float, rate: float | None, workdir: Path) -> RunSummary:
    """vegeta at `rate` requests/s (None: as fast as CAPACITY_WORKERS workers go), pinned to the
    client's CPU as wrk is."""
    argv = [vegeta, "attack", f"-duration={seconds:g}s", "-keepalive=true", f"-timeout={TIMEOUT_S}s"]
    if rate is None:
        argv += ["-rate=0", f"-max-workers={CAPACITY_WORKERS}"]
    else:
        argv += [f"-rate={max(1, round(rate))}/s"]
    if target.root_certs is not None:
        argv.append(f"-root-certs={target.root_certs}")
    taskset = shutil.which("taskset")
    if taskset is not None:
        argv = [taskset, "-c", ",".join(map(str, client_cpus())), *argv]
    env = {**os.environ, "GOMAXPROCS": str(len(client_cpus()))}
    results = workdir / f"vegeta-{os.getpid()}-{abs(hash((target.name, rate)))}.bin"
    with results.open("wb") as out:
        subprocess.run(argv, input=target.text().encode(), stdout=out, stderr=subprocess.PIPE, check=True,
                       env=env, timeout=seconds + 60)
    encoded = subprocess.run([vegeta, "encode", "--to", "csv", str(results)], capture_output=True, check=True,
                             timeout=120)
    results.unlink(missing_ok=True)
    latencies, ok = parse_results_csv(encoded.stdout.decode(errors="replace"))
    return summarize(latencies, ok, 0.0 if rate is None else float(round(rate)), seconds)


def measure(vegeta: str, target: Target, *, seconds: float, warmup: float, workdir: Path,
            say: Callable[[str], None], fractions: Sequence[float] = FRACTIONS) -> dict[str, RunSummary]:
    """{"capacity": ..., "50%": ..., "90%": ...} for one target."""
    if warmup > 0:
        attack(vegeta, target, warmup, None, workdir)
    say(f"   {target.name}: capacity, {CAPACITY_WORKERS} workers for {seconds:g} s")
    capacity = attack(vegeta, target, seconds, None, workdir)
    out = {"capacity": capacity}
    for fraction in fractions:
        rate = fraction * capacity.ok_per_second
        say(f"   {target.name}: {rate:,.0f}/s ({fraction:.0%} of capacity) for {seconds:g} s")
        out[f"{fraction:.0%}"] = attack(vegeta, target, seconds, rate, workdir)
    return out
