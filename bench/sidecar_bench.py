"""The sidecar's footprint: resident memory and idle CPU of one real `jitmesh sidecar`
holding tokens for N audiences from a real broker and OPA, and how fast SIGTERM ends it.

    from bench.sidecar_bench import run
    run()  # {"rss_mb": ..., "idle_cpu_pct": ..., ...}

Idle means: every audience has its token and the next refresh is minutes away (TTL 300 s),
so what is measured is the agent's timers and the API server's housekeeping. With `dpop` the
sidecar holds a key and binds every token; with `upstream` it also listens for credential
injection to one audience's upstream (nothing is sent through it: the listener is the cost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jitmesh.contract import ENV_DPOP, ENV_UPSTREAM_LISTEN_PREFIX, ENV_UPSTREAM_URL_PREFIX, audience_env_suffix
from jitmesh.devissuer import DevIssuer, PodRef
from jitmesh.opa_server import OPAServer
from jitmesh.procs import wait_http
from pdp.process import BrokerProcess
from sidecar.process import SidecarProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TTL = 300
# Modules a sidecar does not need; if `jitmesh sidecar` loads them, they are why its RSS is high.
HEAVY = ("kubernetes", "psycopg", "psycopg_pool", "cryptography", "jwt", "yaml", "sqlite3", "pdp", "injector",
         "urllib3", "google", "hypothesis")

# Allows every request, so the benchmark does not depend on which audiences the shipped policy knows.
ALLOW_ALL = """package jitmesh.authz

decision := {
	"allow": true,
	"scopes": input.request.scopes,
	"ttl_seconds": 3600,
	"reasons": ["sidecar benchmark"],
	"approval_required": false,
}
"""


def proc_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat (fields counted after the last ')')."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def heavy_imports(python: str = sys.executable) -> list[str]:
    """Top-level packages from HEAVY that `jitmesh sidecar` has loaded by the time it checks its
    configuration (an empty environment stops it there, after its imports)."""
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} "
            f"& set({list(HEAVY)!r})))))\n"
            "from jitmesh import cli\n"
            "sys.exit(cli.main(['sidecar'], environ={}))\n")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    try:
        return list(json.loads(done.stdout.splitlines()[-1]))
    except (IndexError, ValueError):
        return [f"probe failed: {done.stderr[-200:]}"]


def variant_env(names: list[str], dpop: bool, upstream: str | None) -> dict[str, str]:
    """The sidecar's environment for DPoP and one injected upstream (the first audience's)."""
    env = {ENV_DPOP: "true"} if dpop else {}
    if upstream is not None:
        from jitmesh.procs import free_port
        suffix = audience_env_suffix(names[0])
        env |= {ENV_UPSTREAM_URL_PREFIX + suffix: upstream,
                ENV_UPSTREAM_LISTEN_PREFIX + suffix: f"127.0.0.1:{free_port()}"}
    return env


def run(workdir: Path | None = None, audiences: int = 3, duration: float = 10.0,
        say: Callable[[str], None] = print, dpop: bool = False, upstream: bool = False) -> dict[str, Any]:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="jitmesh-sidecar-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    policy_dir = workdir / "policy"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "allow_all.rego").write_text(ALLOW_ALL)
    issuer = DevIssuer()
    jwks = issuer.write_jwks(workdir / "jwks.json")
    admin = workdir / "admin-tokens"
    admin.write_text("sidecar-bench-admin\n")
    sa_token = workdir / "sa-token"
    sa_token.write_text(issuer.mint("bench", "app", pod=PodRef("app-0", "uid-0"), ttl=3600))
    names = {f"audience-{i}": ["read"] for i in range(audiences)}

    variant = " with DPoP" * dpop + " and an injected upstream" * upstream
    say(f"   starting OPA, a broker and a sidecar with {audiences} audiences{variant}")
    opa = OPAServer([policy_dir], workdir / "opa.log", opa_bin=os.environ.get("JITMESH_OPA_BIN")).start()
    broker = BrokerProcess(flags={"opa_url": opa.url, "jwks_file": jwks, "subject_issuer": issuer.issuer,
                                  "store": f"sqlite:///{workdir / 'broker.db'}", "admin_token_file": admin},
                           log_path=workdir / "broker.log")
    sidecar = SidecarProcess(broker_url=broker.url, audiences=names, sa_token_file=sa_token,
                             token_dir=workdir / "tokens", log_path=workdir / "sidecar.log", ttl=TTL,
                             extra=variant_env(list(names), dpop, broker.url if upstream else None))
    try:
        broker.start()
        started = time.monotonic()
        sidecar.start()
        wait_http(f"{sidecar.url}/readyz", timeout=30, proc=sidecar.proc)
        ready_s = time.monotonic() - started
        time.sleep(1.0)  # let start-up settle
        rss_before, _ = proc_rss_kb(sidecar.pid)
        say(f"   measuring idle CPU over {duration:.0f} s")
        cpu0, t0 = proc_cpu_seconds(sidecar.pid), time.monotonic()
        time.sleep(duration)
        cpu1, t1 = proc_cpu_seconds(sidecar.pid), time.monotonic()
        rss, hwm = proc_rss_kb(sidecar.pid)
        sent = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.proc is not None
        code = sidecar.proc.wait(timeout=15)
        sigterm_s = time.monotonic() - sent
    finally:
        sidecar.stop(timeout=5)
        broker.stop(timeout=5)
        opa.stop()
    return {
        "audiences": audiences,
        "dpop": dpop,
        "upstream": upstream,
        "rss_mb": round(max(rss, rss_before) / 1024, 1),
        "peak_rss_mb": round(hwm / 1024, 1),
        "idle_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "start_to_ready_s": round(ready_s, 2),
        "sigterm_to_exit_s": round(sigterm_s, 2),
        "sigterm_exit_code": code,
        "heavy_imports": heavy_imports(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
