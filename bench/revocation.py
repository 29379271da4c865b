"""Section 6: how long a revocation takes to reach the sidecars. Two broker replicas
share one PostgreSQL; N real sidecars, half on each replica, hold a token for one audience;
one admin call on replica A revokes the audience, and inotify times each token file's removal."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from bench import pg
from bench.context import Context
from bench.issuance import Setup, opa_and_cluster
from bench.report import Aim, Figure, SectionResult, unavailable
from bench.stack import ADMIN_TOKEN, bench_pod, missing_flags, start_broker
from bench.stats import summarize
from jitmesh.procs import ManagedProcess, wait_http
from pdp.process import BrokerProcess

TITLE = "6. Revocation propagation: admin call to token file removal"
EVENTS_PATH = "/v1/revocations/events"
AIM_P99_MS = Aim("<", 500)
READY_TIMEOUT_S = 120.0
PROPAGATION_TIMEOUT_S = 10.0
START_BATCH = 10  # sidecars started at once, so 100 Python start-ups do not starve the brokers

IN_DELETE = 0x200
IN_MOVED_FROM = 0x40
_EVENT = struct.Struct("iIII")


def parse_inotify(buf: bytes) -> list[tuple[int, int, str]]:
    """(watch descriptor, mask, name) for each `struct inotify_event` in a read() buffer."""
    out = []
    offset = 0
    while offset + _EVENT.size <= len(buf):
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
        start = offset + _EVENT.size
        name = buf[start:start + length].split(b"\0", 1)[0].decode(errors="replace")
        out.append((wd, mask, name))
        offset = start + length
    return out


class Removals:
    """Watches directories for a file name's deletion (or rename away), with the time it was seen."""

    def __init__(self, dirs: Sequence[Path], name: str) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.name = name
        self.index: dict[int, int] = {}
        for i, d in enumerate(dirs):
            wd = self._libc.inotify_add_watch(self.fd, str(d).encode(), IN_DELETE | IN_MOVED_FROM)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d} failed")
            self.index[wd] = i

    def wait(self, count: int, timeout: float) -> dict[int, float]:
        """Monotonic time of the first removal seen in each directory, until `count` or `timeout`."""
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.fd], [], [], left)
            now = time.monotonic()
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                for wd, _mask, name in parse_inotify(os.read(self.fd, 1 << 16)):
                    if name == self.name and wd in self.index:
                        seen.setdefault(self.index[wd], now)
        return seen

    def close(self) -> None:
        os.close(self.fd)


def unavailable_reason() -> str | None:
    reason = pg.unavailable_reason()
    if reason:
        return reason
    reason = missing_flags("broker", ["--store"]) or missing_flags("sidecar", [])
    if reason:
        return reason
    try:
        import sidecar.process  # noqa: F401
    except ImportError as exc:
        return f"sidecar.process cannot be imported: {exc}"
    return None


def events_endpoint_reason(broker: BrokerProcess) -> str | None:
    """None when the broker streams revocation events as SSE."""
    try:
        with httpx.stream("GET", f"{broker.url}{EVENTS_PATH}", timeout=5,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "text/event-stream"}) as r:
            kind = r.headers.get("content-type", "")
            if r.status_code != 200 or not kind.startswith("text/event-stream"):
                return f"GET {EVENTS_PATH} answers {r.status_code} {kind or 'without a content type'}"
    except httpx.HTTPError as exc:
        return f"GET {EVENTS_PATH} failed: {type(exc).__name__}"
    return None


@contextlib.contextmanager
def replicas(setup: Setup, dsn: str) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    started: list[BrokerProcess] = []
    try:
        for name in ("broker-a", "broker-b"):
            started.append(start_broker(setup.dir, name, opa_url=setup.opa.url, cluster=setup.cluster,
                                        store_url=dsn))
        yield started[0], started[1]
    finally:
        for b in started:
            b.stop()


def run(ctx: Context) -> SectionResult:
    reason = unavailable_reason()
    if reason:
        return unavailable("revocation", TITLE, reason)
    from sidecar.process import SidecarProcess

    n = ctx.options.sidecars
    with opa_and_cluster(ctx, "revocation") as setup, pg.server(setup.dir) as dsn, \
            replicas(setup, dsn) as (a, b):
        reason = events_endpoint_reason(a)
        if reason:
            return unavailable("revocation", TITLE, f"the broker has no revocation events yet: {reason}")
        workload = setup.workload
        sidecars: list[SidecarProcess] = []
        try:
            ctx.say(f"   starting {n} sidecars, half on each replica")
            for i in range(n):
                sa_file = setup.dir / f"sa-{i}.jwt"
                sa_file.write_text(setup.cluster.subject_token(workload, bench_pod(workload, i)))
                proc = SidecarProcess(broker_url=(a if i % 2 == 0 else b).url,
                                      audiences={workload.audience: list(workload.scopes)}, sa_token_file=sa_file,
                                      token_dir=setup.dir / f"tokens-{i}", log_path=setup.dir / f"sidecar-{i}.log")
                sidecars.append(proc)
                proc.token_dir.mkdir(parents=True, exist_ok=True)
            for first in range(0, n, START_BATCH):
                batch = sidecars[first:first + START_BATCH]
                for proc in batch:
                    ManagedProcess.start(proc)  # not SidecarProcess.start: that waits for each in turn
                for proc in batch:
                    wait_http(f"{proc.url}/healthz", timeout=READY_TIMEOUT_S, proc=proc.proc)
                if (first + len(batch)) % 20 == 0 or first + len(batch) == n:
                    ctx.say(f"   {first + len(batch)}/{n} sidecars up")
            waiting = wait_for_tokens([p.token_file(workload.audience) for p in sidecars], READY_TIMEOUT_S)
            if waiting:
                return unavailable("revocation", TITLE, f"{len(waiting)} of {n} sidecars had no token after "
                                   f"{READY_TIMEOUT_S:.0f} s; e.g. {sidecars[waiting[0]].output()[-300:]}")
            removals = Removals([p.token_dir for p in sidecars], workload.audience)
            seen: dict[int, float] = {}
            # a thread of its own reads the events as they come, so none waits for the admin call to return
            watcher = threading.Thread(target=lambda: seen.update(removals.wait(n, PROPAGATION_TIMEOUT_S)))
            try:
                watcher.start()
                ctx.say(f"   revoking audience {workload.audience} on replica A")
                t0 = time.monotonic()
                r = httpx.post(f"{a.url}/v1/admin/revocations", timeout=10,
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                               json={"audience": workload.audience, "reason": "bench: revocation propagation"})
                call_ms = (time.monotonic() - t0) * 1000
                watcher.join(PROPAGATION_TIMEOUT_S + 5)
                if r.status_code != 201:
                    return unavailable("revocation", TITLE, f"POST /v1/admin/revocations answered "
                                       f"{r.status_code}: {r.text[:200]}")
                missing = [i for i in range(n) if i not in seen]
                if missing:
                    ctx.say(f"   {len(missing)} files still there, e.g. sidecar {missing[0]}: "
                            f"{sidecars[missing[0]].output()[-400:]}")
            finally:
                removals.close()
        finally:
            for p in sidecars:
                p.signal(15)
            for p in sidecars:
                p.stop(timeout=5)
    return propagation_result(seen, t0, n, call_ms)


def wait_for_tokens(files: Sequence[Path], timeout: float) -> list[int]:
    """Indexes of the files still missing after `timeout`."""
    deadline = time.monotonic() + timeout
    missing = list(range(len(files)))
    while missing and time.monotonic() < deadline:
        missing = [i for i in missing if not files[i].exists()]
        time.sleep(0.2)
    return missing


def propagation_result(seen: dict[int, float], t0: float, n: int, call_ms: float) -> SectionResult:
    delays = [(t - t0) * 1000 for t in seen.values()]
    by_replica = {"A": [(t - t0) * 1000 for i, t in seen.items() if i % 2 == 0],
                  "B": [(t - t0) * 1000 for i, t in seen.items() if i % 2 == 1]}
    figures = [Figure("sidecars whose file went", len(seen), note=f"of {n} within {PROPAGATION_TIMEOUT_S:.0f} s")]
    if delays:
        s = summarize(delays)
        figures += [Figure("p50 propagation", s.p50, "ms"),
                    Figure("p99 propagation", s.p99 if len(seen) == n else None, "ms", aim=AIM_P99_MS,
                           note="" if len(seen) == n else "not every file went: no p99"),
                    Figure("max propagation", s.max, "ms")]
        for replica, values in by_replica.items():
            if values:
                figures.append(Figure(f"p50 on replica {replica}", summarize(values).p50, "ms"))
    figures.append(Figure("admin call", call_ms, "ms"))
    notes = [f"{n} sidecars, one audience each, alternating between replicas A and B on one PostgreSQL; "
             "one audience revocation on A; times from the call's start to inotify seeing the file go"]
    return SectionResult("revocation", TITLE, figures, notes,
                         raw={"delays_ms": sorted(delays), "sidecars": n, "admin_call_ms": call_ms})
