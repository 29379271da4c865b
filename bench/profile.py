"""Where the broker's time goes: py-spy samples the broker process while wrk drives
`POST /token`, and the stacks are summed by library (self time) and by broker step
(inclusive time of pdp/ functions)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import procstat, wrk
from bench.context import Context
from bench.issuance import FORM, broker, opa_and_cluster, request_token
from bench.report import Figure, SectionResult
from bench.stack import sqlite_url

TITLE = "1b. Where the broker's time goes (py-spy while issuing on SQLite)"
PY_SPY_DIR = Path.home() / ".cache" / "jitmesh" / "py-spy"
PROJECT_PACKAGES = ("pdp", "jitmesh", "sidecar", "injector")
SAMPLE_RATE = 100
TOP = 8

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def area(self) -> str:
        """A project module by file (`pdp/opa.py`), anything else by top-level package (`jwt`)."""
        head = self.file.split("/", 1)[0]
        if head in PROJECT_PACKAGES:
            return self.file
        if head.endswith(".py"):
            return head[:-3]
        return head

    @property
    def qualified(self) -> str:
        return f"{self.file.removesuffix('.py').replace('/', '.')}:{self.function}"


def parse_frame(text: str) -> Frame | None:
    """`function (file.py:123)` -> Frame; py-spy's `process ...` and `thread ...` roots -> None."""
    m = _FRAME.match(text.strip())
    if m is None:
        return None
    return Frame(m["func"], m["file"])


def parse_collapsed(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy's raw (collapsed) output: one `frame;frame;... COUNT` line per distinct stack, root first."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in (parse_frame(part) for part in stack.split(";")) if f is not None]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def self_time_by_area(stacks: Iterable[tuple[list[Frame], int]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for frames, count in stacks:
        out[frames[-1].area] += count
    return out


# the process's entry frames: every sample is under them, so they say nothing
ENTRY_MODULES = ("jitmesh.cli:", "jitmesh:", "pdp.cli:")


def inclusive_project_functions(stacks: Iterable[tuple[list[Frame], int]]) -> Counter[str]:
    """Samples spent in or under each project function, each stack counted once per function."""
    out: Counter[str] = Counter()
    for frames, count in stacks:
        for name in {f.qualified for f in frames if f.file.split("/", 1)[0] in PROJECT_PACKAGES}:
            if not name.startswith(ENTRY_MODULES):
                out[name] += count
    return out


def main_thread(stacks: Iterable[tuple[list[Frame], int]]) -> list[tuple[list[Frame], int]]:
    """The stacks of the main thread (the event loop): not rooted in a `threading` thread."""
    return [(frames, count) for frames, count in stacks
            if not (frames[0].file.startswith("threading") and frames[0].function.endswith("_bootstrap"))]


def hot_spots(stacks: Iterable[tuple[list[Frame], int]]) -> Counter[str]:
    """Self time keyed by who called into the leaf's library: `caller -> library`, which
    names the call site to change (e.g. `httpcore...has_expired -> anyio`)."""
    out: Counter[str] = Counter()
    for frames, count in stacks:
        area = frames[-1].area
        i = len(frames) - 1
        while i > 0 and frames[i - 1].area == area:
            i -= 1
        out[f"{frames[i - 1].qualified} -> {area}" if i > 0 else area] += count
    return out


def share_lines(counts: Counter[str], total: int, top: int = TOP) -> list[str]:
    return [f"{name} {count / total:.0%}" for name, count in counts.most_common(top)] if total else []


def thread_line(per_thread: dict[int, float], main_tid: int, issued: int) -> str:
    """`event loop 1.46 ms, thread 7028 0.21 ms` from CPU seconds per thread over `issued` issuances."""
    parts = []
    for tid, cpu in sorted(per_thread.items(), key=lambda kv: (kv[0] != main_tid, -kv[1])):
        ms = cpu * 1000 / issued
        if ms >= 0.01:
            parts.append(f"{'event loop (main thread)' if tid == main_tid else f'thread {tid}'} {ms:.2f} ms")
    return ", ".join(parts)


def py_spy() -> str:
    """py-spy from PyPI, installed on first use into the cache outside the clone."""
    found = shutil.which("py-spy") or (str(PY_SPY_DIR / "bin" / "py-spy")
                                       if (PY_SPY_DIR / "bin" / "py-spy").exists() else None)
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "--target", str(PY_SPY_DIR), "py-spy"], check=True, timeout=300)
    return str(PY_SPY_DIR / "bin" / "py-spy")


def run(ctx: Context) -> SectionResult:
    spy = py_spy()
    seconds = max(3.0, min(ctx.options.duration, 8.0))
    with opa_and_cluster(ctx, "profile") as setup, \
            broker(ctx, setup, "broker-profiled", sqlite_url(setup.dir)) as proc:
        request_token(proc, setup.body)
        url = f"{proc.url}/token"
        wrk.run(url, setup.body, FORM, connections=ctx.options.connections, duration_s=ctx.options.warmup or 1,
                workdir=setup.dir)
        raw = setup.dir / "py-spy.txt"
        ctx.say(f"   sampling the broker at {SAMPLE_RATE} Hz for {seconds:.0f} s under load")
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--subprocesses", "--nonblocking",
                                     "--rate", str(SAMPLE_RATE), "--duration", str(int(seconds)),
                                     "--format", "raw", "--output", str(raw)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        done: list[wrk.WrkResult] = []
        load = threading.Thread(target=lambda: done.append(wrk.run(
            url, setup.body, FORM, connections=ctx.options.connections, duration_s=seconds, workdir=setup.dir)),
            daemon=True)
        threads_before = procstat.thread_cpu_seconds(proc.pid)
        load.start()
        spy_out, _ = spy_proc.communicate(timeout=seconds + 60)
        load.join(seconds + 60)
        per_thread = procstat.thread_shares(threads_before, procstat.thread_cpu_seconds(proc.pid))
        if spy_proc.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy_proc.returncode}): {spy_out[-300:]}")
        stacks = parse_collapsed(raw.read_text())
    total = sum(c for _, c in stacks)
    by_area = self_time_by_area(stacks)
    steps = inclusive_project_functions(stacks)
    loop = main_thread(stacks)
    loop_total = sum(c for _, c in loop)
    notes = ["self time by module or library: " + ", ".join(share_lines(by_area, total)),
             "event loop only, self time: " + ", ".join(share_lines(self_time_by_area(loop), loop_total, TOP + 2)),
             "inclusive time of broker functions: " + ", ".join(share_lines(steps, total, TOP + 4)),
             "hot spots (caller -> library where the time is spent): "
             + ", ".join(share_lines(hot_spots(stacks), total, TOP)),
             f"{total} samples of the busy broker (idle waits excluded, but a thread blocked in fsync counts as "
             "busy: the CPU per thread below is the kernel's count); stacks kept in the JSON results"]
    issued = done[0].ok_requests if done else 0
    if issued:
        notes.append("broker CPU per issuance by thread: " + thread_line(per_thread, proc.pid, issued))
    top_stacks = sorted(stacks, key=lambda s: -s[1])[:15]
    return SectionResult("profile", TITLE, [Figure("samples", total)], notes, raw={
        "self_by_area": dict(by_area.most_common(30)), "inclusive_project": dict(steps.most_common(40)),
        "hot_spots": dict(hot_spots(stacks).most_common(30)),
        "top_stacks": [{"count": c, "stack": [f"{f.qualified}" for f in fr]} for fr, c in top_stacks]})
