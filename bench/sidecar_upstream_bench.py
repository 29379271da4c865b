"""What credential injection adds to a call: N sequential requests on a keep-alive client
straight to a small upstream, and as many through a real sidecar's upstream port (which adds
the token, and with DPoP a fresh proof per request), taken in turn; p50 and p99 of each.

    from bench.sidecar_upstream_bench import run
    run()  # {"direct_p50_ms": ..., "bearer_p50_ms": ..., "bearer_added_p50_ms": ..., ...}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.stats import summarize
from jitmesh.contract import ENV_DPOP, ENV_UPSTREAM_LISTEN_PREFIX, ENV_UPSTREAM_URL_PREFIX, audience_env_suffix
from jitmesh.devissuer import DevIssuer, PodRef
from jitmesh.opa_server import OPAServer
from jitmesh.procs import ManagedProcess, free_port, wait_http
from pdp.process import BrokerProcess
from sidecar.process import SidecarProcess

AUDIENCE = "bench-api"
WARMUP = 50

ALLOW_ALL = """package jitmesh.authz

decision := {
	"allow": true,
	"scopes": input.request.scopes,
	"ttl_seconds": 3600,
	"reasons": ["sidecar upstream benchmark"],
	"approval_required": false,
}
"""

# The upstream: its own process, so its work is not the measuring client's.
UPSTREAM = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _interleaved(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    """n timed GETs per URL, taken in turn (one each, round after round) on a keep-alive client
    per URL, so a change in the machine's load moves every series alike."""
    clients = {name: httpx.Client(timeout=10) for name in urls}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for i in range(WARMUP + n):
            for name, url in urls.items():
                t0 = time.perf_counter()
                resp = clients[name].get(f"{url}/items/{i}?q=1")
                took = (time.perf_counter() - t0) * 1000
                if resp.status_code != 200:
                    raise RuntimeError(f"{name} {url}: HTTP {resp.status_code}: {resp.text[:200]}")
                if i >= WARMUP:
                    samples[name].append(took)
    finally:
        for client in clients.values():
            client.close()
    return samples


def run(workdir: Path | None = None, requests: int = 2000, say: Callable[[str], None] = print) -> dict[str, Any]:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="jitmesh-upstream-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    policy_dir = workdir / "policy"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "allow_all.rego").write_text(ALLOW_ALL)
    issuer = DevIssuer()
    jwks = issuer.write_jwks(workdir / "jwks.json")
    admin = workdir / "admin-tokens"
    admin.write_text("upstream-bench-admin\n")
    sa_token = workdir / "sa-token"
    sa_token.write_text(issuer.mint("bench", "app", pod=PodRef("app-0", "uid-0"), ttl=3600))
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    suffix = audience_env_suffix(AUDIENCE)

    say(f"   starting OPA, a broker, an upstream and two sidecars (bearer, DPoP); {requests} requests each")
    opa = OPAServer([policy_dir], workdir / "opa.log", opa_bin=os.environ.get("JITMESH_OPA_BIN")).start()
    broker = BrokerProcess(flags={"opa_url": opa.url, "jwks_file": jwks, "subject_issuer": issuer.issuer,
                                  "store": f"sqlite:///{workdir / 'broker.db'}", "admin_token_file": admin},
                           log_path=workdir / "broker.log")
    upstream = ManagedProcess("upstream", [sys.executable, "-c", UPSTREAM, str(up_port)], workdir / "upstream.log")
    sidecars: dict[str, tuple[SidecarProcess, str]] = {}
    try:
        broker.start()
        upstream.start()
        wait_http(upstream_url + "/", timeout=30, proc=upstream.proc)
        for mode in ("bearer", "dpop"):
            port = free_port()
            extra = {ENV_UPSTREAM_URL_PREFIX + suffix: upstream_url,
                     ENV_UPSTREAM_LISTEN_PREFIX + suffix: f"127.0.0.1:{port}"}
            if mode == "dpop":
                extra[ENV_DPOP] = "true"
            sc = SidecarProcess(broker_url=broker.url, audiences={AUDIENCE: ["read"]}, sa_token_file=sa_token,
                                token_dir=workdir / f"tokens-{mode}", log_path=workdir / f"sidecar-{mode}.log",
                                extra=extra)
            sc.start()
            wait_http(f"{sc.url}/readyz", timeout=30, proc=sc.proc)
            sidecars[mode] = (sc, f"http://127.0.0.1:{port}")
        samples = _interleaved({"direct": upstream_url, **{m: url for m, (_, url) in sidecars.items()}}, requests)
        direct = summarize(samples["direct"])
        out: dict[str, Any] = {"requests": requests, "direct_p50_ms": round(direct.p50, 3),
                               "direct_p99_ms": round(direct.p99, 3)}
        for mode in sidecars:
            via = summarize(samples[mode])
            out.update({f"{mode}_p50_ms": round(via.p50, 3), f"{mode}_p99_ms": round(via.p99, 3),
                        f"{mode}_added_p50_ms": round(via.p50 - direct.p50, 3),
                        f"{mode}_added_p99_ms": round(via.p99 - direct.p99, 3)})
        return out
    finally:
        for sc, _ in sidecars.values():
            sc.stop(timeout=5)
        upstream.stop()
        broker.stop(timeout=5)
        opa.stop()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
