"""The load client: wrk (C, one epoll thread), so the client costs a few percent of a core
instead of the core a Python client would take from the broker it measures. A Lua script
gives it the POST body and prints the figures as one JSON line we parse."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "JITMESH_WRK "

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "\n" .. "JITMESH_WRK " .. '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}' .. "\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


class WrkUnavailable(RuntimeError):
    pass


class WrkOutputError(ValueError):
    pass


def lua_script(body: str, content_type: str, method: str = "POST") -> str:
    """A wrk script sending `body` on every request and reporting as JSON when done."""
    delim = "=" * 4
    while f"]{delim}]" in body:
        delim += "="
    return (f'wrk.method = "{method}"\n'
            f'wrk.headers["Content-Type"] = "{content_type}"\n'
            f"wrk.body = [{delim}[{body}]{delim}]\n" + _DONE)


def lua_rotating_script(content_type: str, method: str = "POST", header: str | None = None) -> str:
    """A wrk script sending the lines of the file named after `--` one after another, one per
    request, starting over when they run out (e.g. a distinct subject token each time). With
    `header`, each line is `<value of header> <body>` (e.g. a fresh DPoP proof each time)."""
    if header is None:
        split = "  bodies[#bodies + 1] = line\n"
        headers = "{[\"Content-Type\"] = content_type}"
        body = "bodies[next_body]"
    else:
        split = ('  local sep = string.find(line, " ", 1, true)\n'
                 "  values[#values + 1] = string.sub(line, 1, sep - 1)\n"
                 "  bodies[#bodies + 1] = string.sub(line, sep + 1)\n")
        headers = f'{{["Content-Type"] = content_type, ["{header}"] = values[next_body]}}'
        body = "bodies[next_body]"
    return (f'local content_type = "{content_type}"\n'
            "local bodies = {}\nlocal values = {}\nlocal next_body = 0\n"
            "function init(args)\n"
            "  for line in io.lines(args[1]) do\n" + split + "  end\n"
            "end\n"
            "function request()\n"
            "  next_body = next_body % #bodies + 1\n"
            f'  return wrk.format("{method}", nil, {headers}, {body})\n'
            "end\n" + _DONE)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_status: int
    errors_timeout: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    client_cpu_s: float = 0.0

    @property
    def errors(self) -> int:
        return (self.errors_connect + self.errors_read + self.errors_write
                + self.errors_status + self.errors_timeout)

    @property
    def ok_requests(self) -> int:
        """Requests that got a 2xx/3xx answer (wrk counts a status error as a completed request)."""
        return max(0, self.requests - self.errors_status)

    @property
    def ok_per_second(self) -> float:
        return self.ok_requests / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "duration_s": self.duration_s, "ok_per_second": self.ok_per_second,
                "errors": {"connect": self.errors_connect, "read": self.errors_read, "write": self.errors_write,
                           "status": self.errors_status, "timeout": self.errors_timeout},
                "latency_ms": {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms,
                               "max": self.max_ms, "mean": self.mean_ms},
                "client_cpu_s": self.client_cpu_s}


def parse_output(stdout: str) -> WrkResult:
    """The figures from the JSON line our `done` hook prints (latencies arrive in microseconds)."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            try:
                doc = json.loads(line[len(MARKER):])
                err, lat = doc["errors"], doc["latency_us"]
                return WrkResult(
                    requests=int(doc["requests"]), duration_s=doc["duration_us"] / 1e6,
                    errors_connect=int(err["connect"]), errors_read=int(err["read"]),
                    errors_write=int(err["write"]), errors_status=int(err["status"]),
                    errors_timeout=int(err["timeout"]),
                    p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
                    max_ms=lat["max"] / 1000, mean_ms=lat["mean"] / 1000)
            except (KeyError, TypeError, ValueError) as exc:
                raise WrkOutputError(f"wrk summary line is malformed ({exc}): {line[:300]}") from exc
    raise WrkOutputError(f"wrk printed no {MARKER.strip()} summary line; its output ends: {stdout[-500:]!r}")


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkUnavailable("wrk is not installed (`make bench` installs it: apt-get install -y wrk)")
    return found


def client_cpus() -> list[int]:
    """Pin the client to the last CPU we may use: it keeps wrk's thread in one place and
    leaves the other cores' caches to the broker and OPA."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1:]


def run(url: str, body: str | Path, content_type: str, *, connections: int, duration_s: float,
        workdir: Path, timeout_s: float = 5.0, tick: Callable[[float], None] | None = None,
        line_header: str | None = None) -> WrkResult:
    """Drive `url` with `connections` keep-alive connections for `duration_s` seconds, sending
    `body`, or each line of the file `body` in turn (with `line_header`, each line starts with
    that header's value); `tick(elapsed)` is called about once a second while it runs."""
    script = workdir / f"wrk-{time.monotonic_ns()}.lua"
    rotating = isinstance(body, Path)
    script.write_text(lua_rotating_script(content_type, header=line_header) if rotating
                      else lua_script(str(body), content_type))
    argv = [wrk_binary(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s:g}s", "-s", str(script), url]
    if rotating:
        argv += ["--", str(body)]
    taskset = shutil.which("taskset")
    if taskset is not None:
        argv = [taskset, "-c", ",".join(map(str, client_cpus())), *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, err = workdir / f"{script.stem}.out", workdir / f"{script.stem}.err"
    with out.open("w") as out_f, err.open("w") as err_f:
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, text=True)
        start = time.monotonic()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - start
                if elapsed > duration_s + 60:
                    raise WrkOutputError(f"wrk did not stop {duration_s + 60:.0f}s after it started")
                if tick is not None:
                    tick(elapsed)
                time.sleep(min(1.0, max(0.05, duration_s - elapsed)) if elapsed < duration_s else 0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout, stderr = out.read_text(), err.read_text()
    if proc.returncode != 0:
        raise WrkOutputError(f"wrk exited {proc.returncode}: {(stderr or stdout)[-500:]}")
    result = parse_output(stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(**{**result.__dict__, "client_cpu_s": cpu})
