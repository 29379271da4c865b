"""CPU time and memory of the processes under test, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def parse_stat(text: str) -> tuple[int, int, float]:
    """(pid, pgid, utime+stime seconds) from one /proc/<pid>/stat line; the command name
    may hold spaces and parentheses, so fields are counted from the last ')'."""
    pid = int(text[: text.index(" ")])
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state (field 3); pgrp is field 5, utime 14, stime 15
    pgid = int(fields[2])
    ticks = int(fields[11]) + int(fields[12])
    return pid, pgid, ticks / CLOCK_TICKS


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds used so far by every live process in a process group (a broker and its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            _, group, cpu = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if group == pgid:
            total += cpu
    return total


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid, group, _ = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if group == pgid:
            pids.append(pid)
    return sorted(pids)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of a process, by thread id (the main thread's is `pid`)."""
    out: dict[int, float] = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            _, _, cpu = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = cpu
    return out


def thread_shares(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU seconds each thread used between two snapshots (threads that started in between count from 0)."""
    return {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items() if cpu - before.get(tid, 0.0) > 0}
