"""Section: the access proxy (`jitmesh proxy`). At a fixed offered rate (open loop, vegeta),
the latency the proxy adds over sending the same load straight to the upstream, beside nginx
as the floor for one proxy hop; the policy's evaluation time alone, in-process (Wasm) and
through OPA's REST API, as the proxy measured it; the proxy's resident memory; and how long a
subject revocation takes to reach 20 proxies (admin call to the first refused request)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.context import Context
from bench.report import Aim, Figure, SectionResult, unavailable
from bench.stack import ADMIN_TOKEN, POLICIES, Cluster, start_broker, start_opa
from bench.stats import percentile
from jitmesh import dpop
from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from jitmesh.devissuer import PodRef
from jitmesh.procs import ManagedProcess, free_port, wait_http
from proxy.process import ProxyProcess

TITLE = "7. Access proxy: added latency at a fixed rate, policy time, memory, revocation reach"
RATE = 1000
RATES = (RATE, 200, 50)  # the aim's rate, and lower ones that show the cost of one hop unsaturated
PROXIES_FOR_REVOCATION = 20
SUBJECT = "system:serviceaccount:demo:demo-app"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u;
  scgi_temp_path {d}/s;
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{hop}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
            proxy_set_header Connection ""; }} }}
}}
"""


VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.12.0"
TOOLS_BIN = Path.home() / ".cache" / "jitmesh" / "bin"


def vegeta_bin(ctx: Context | None = None) -> str | None:
    """The open-loop load tool: on PATH, else built once from the Go module proxy into the tools cache."""
    for candidate in (shutil.which("vegeta"), str(TOOLS_BIN / "vegeta")):
        if candidate and Path(candidate).is_file():
            return candidate
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is None:
        return None
    if ctx is not None:
        ctx.say(f"   building vegeta ({VEGETA_MODULE}) into {TOOLS_BIN} (once)")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "install", VEGETA_MODULE], env={**os.environ, "GOBIN": str(TOOLS_BIN)},
                          capture_output=True, timeout=900)
    built = TOOLS_BIN / "vegeta"
    return str(built) if done.returncode == 0 and built.is_file() else None


def latency_ms(report: dict[str, Any]) -> dict[str, float]:
    """p50, p99 and the success ratio of a `vegeta report -type=json` document."""
    lat = report.get("latencies") or {}
    return {"p50": lat.get("50th", 0) / 1e6, "p99": lat.get("99th", 0) / 1e6,
            "success": float(report.get("success", 0.0))}


def attack(vegeta: str, url: str, headers: Sequence[str], rate: int, seconds: float) -> dict[str, Any]:
    return attack_targets(vegeta, "\n".join([f"GET {url}", *headers]) + "\n", rate, seconds)


def dpop_targets(key: Any, url: str, token: str, count: int) -> str:
    """`count` vegeta targets for `url`, each with the bound token and a proof of its own
    (the proxy accepts a proof once)."""
    proofs = (dpop.make_proof(key, "GET", url, access_token=token) for _ in range(count))
    return "\n".join(f"GET {url}\nAuthorization: DPoP {token}\nDPoP: {proof}\n" for proof in proofs)


def attack_dpop(vegeta: str, key: Any, url: str, token: str, rate: int, seconds: float) -> dict[str, Any]:
    targets = dpop_targets(key, url, token, int(rate * seconds * 1.1) + 10)
    return attack_targets(vegeta, targets, rate, seconds)


def attack_targets(vegeta: str, target: str, rate: int, seconds: float) -> dict[str, Any]:
    run = subprocess.run([vegeta, "attack", f"-rate={rate}/s", f"-duration={seconds}s", "-keepalive=true",
                          "-timeout=5s"], input=target.encode(), capture_output=True, check=True)
    out = subprocess.run([vegeta, "report", "-type=json"], input=run.stdout, capture_output=True, check=True)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def policy_mean_us(metrics_url: str) -> float | None:
    text = httpx.get(metrics_url + "/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("jitmesh_proxy_policy_seconds_")}
    count = values.get("jitmesh_proxy_policy_seconds_count", 0)
    return values["jitmesh_proxy_policy_seconds_sum"] / count * 1e6 if count else None


def access_token(broker_url: str, cluster: Cluster, key: Any = None) -> str:
    """A token for orders-api; bound to `key` by a DPoP proof when one is given."""
    subject = cluster.issuer.mint("demo", "demo-app", ttl=3600)
    headers = {}
    if key is not None:
        htu = httpx.get(broker_url + "/.well-known/oauth-authorization-server", timeout=10).json()["token_endpoint"]
        headers["DPoP"] = dpop.make_proof(key, "POST", htu)
    r = httpx.post(broker_url + "/token", data={"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject,
                                                "subject_token_type": TOKEN_TYPE_JWT, "audience": "orders-api",
                                                "scope": "read", "requested_ttl": "3600"}, headers=headers,
                   timeout=10)
    r.raise_for_status()
    return str(r.json()["access_token"])


def applied_at(log_text: str, kind: str) -> float | None:
    """Unix time of the first `events.applied` line for a revocation of `kind` in a proxy's log."""
    for line in log_text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == "events.applied" and doc.get("kind") == kind and doc.get("action") == "revoked":
            stamp = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            return stamp.timestamp()
    return None


def revocation_reach(proxies: Sequence[ProxyProcess], broker_url: str, token: str) -> tuple[list[float], int]:
    """Seconds from the admin call to each proxy applying the revocation (its own log's clock, the
    same machine's), and how many proxies then refused the revoked subject's token."""
    called = time.time()
    httpx.post(broker_url + "/v1/admin/revocations", json={"subject": SUBJECT, "reason": "bench"},
               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).raise_for_status()
    deadline = time.monotonic() + 10
    reach: dict[int, float] = {}
    while len(reach) < len(proxies) and time.monotonic() < deadline:
        for i, proxy in enumerate(proxies):
            if i not in reach:
                at = applied_at(proxy.output(), "subject")
                if at is not None:
                    reach[i] = max(0.0, at - called)
        time.sleep(0.05)
    refused = sum(httpx.get(p.url + "/orders/1", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).status_code == 401 for p in proxies)
    return sorted(reach.values()), refused


def policy_alone_us(broker_url: str, sa_token: str, opa_url: str, n: int = 500) -> dict[str, float]:
    """Mean time of one access decision, sequentially: in-process (OPA's Wasm build on wasmtime) and
    through OPA's REST API (one keep-alive connection), with the same input."""
    import asyncio

    from jitmesh.opa_wasm import OPAWasm, bundle_parts
    from proxy.policy import RestPolicy
    from proxy.policy_input import build_input

    doc = build_input(method="GET", path="/orders/1", host="orders", scheme="http", headers=[("accept", "*/*")],
                      client=("127.0.0.1", 1), claims={"sub": SUBJECT, "scope": "read", "aud": "orders-api"},
                      audience="orders-api")
    bundle = httpx.get(broker_url + "/v1/access-policy/bundle", headers={"Authorization": f"Bearer {sa_token}"},
                       timeout=90)
    bundle.raise_for_status()
    wasm, data = bundle_parts(bundle.content)
    policy = OPAWasm(wasm, data, "jitmesh/access/decision")
    policy.evaluate(doc)
    t = time.perf_counter()
    for _ in range(n):
        policy.evaluate(doc)
    in_process = (time.perf_counter() - t) / n * 1e6

    async def rest() -> float:
        client = RestPolicy(opa_url, "jitmesh/access/decision")
        await client.evaluate(doc)
        t = time.perf_counter()
        for _ in range(n):
            await client.evaluate(doc)
        took = (time.perf_counter() - t) / n * 1e6
        await client.close()
        return took

    return {"in_process_us": in_process, "rest_us": asyncio.run(rest())}


def run(ctx: Context) -> SectionResult:
    vegeta = vegeta_bin(ctx)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if vegeta is None or nginx is None:
        return unavailable("proxy", TITLE, f"needs vegeta (go install {VEGETA_MODULE}) "
                           "and nginx (apt-get install nginx)")
    work = ctx.workdir / "proxy"
    work.mkdir(parents=True, exist_ok=True)
    opa = start_opa(work)
    cluster = Cluster(work)
    opa_bin = os.environ.get("JITMESH_OPA_BIN") or ""
    broker = start_broker(work, "broker", opa_url=opa.url, cluster=cluster, store_url=f"sqlite:///{work}/b.db",
                          extra=["--access-policy-dir", str(POLICIES), *(["--opa-bin", opa_bin] if opa_bin else [])])
    up, hop = free_port(), free_port()
    (work / "nginx").mkdir(exist_ok=True)
    conf = work / "nginx" / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=work / "nginx", up=up, hop=hop))
    web = ManagedProcess("nginx", [nginx, "-p", str(work / "nginx"), "-c", str(conf), "-e",
                                   str(work / "nginx" / "error.log")], work / "nginx" / "out.log").start()
    started: list[Any] = [web]
    figures: list[Figure] = []
    notes: list[str] = []
    raw: dict[str, Any] = {}
    try:
        wait_http(f"http://127.0.0.1:{up}/", proc=web.proc)
        sa = work / "proxy-sa"
        sa.write_text(cluster.issuer.mint("demo", "orders", ttl=3600))
        upstream = f"http://127.0.0.1:{up}"
        wasm = ProxyProcess(broker_url=broker.url, audiences=["orders-api"], sa_token_file=sa,
                            log_path=work / "proxy-wasm.log", upstream=upstream).start(timeout=60)
        started.append(wasm)
        rest = ProxyProcess(broker_url=broker.url, audiences=["orders-api"], sa_token_file=sa,
                            log_path=work / "proxy-rest.log", upstream=upstream, opa_url=opa.url).start(timeout=60)
        started.append(rest)
        token = access_token(broker.url, cluster)
        auth = [f"Authorization: Bearer {token}"]
        dpop_key = dpop.new_key()
        bound = access_token(broker.url, cluster, dpop_key)
        seconds = ctx.options.duration
        runs = {"direct": (f"{upstream}/orders/1", []), "nginx": (f"http://127.0.0.1:{hop}/orders/1", []),
                "proxy (in-process)": (f"{wasm.url}/orders/1", auth), "proxy (REST)": (f"{rest.url}/orders/1", auth)}
        for rate in RATES:
            measured: dict[str, dict[str, float]] = {}
            for name, (url, headers) in runs.items():
                ctx.say(f"   {rate}/s for {seconds:.0f} s: {name}")
                attack(vegeta, url, headers, rate, min(2.0, ctx.options.warmup))
                measured[name] = latency_ms(attack(vegeta, url, headers, rate, seconds))
            ctx.say(f"   {rate}/s for {seconds:.0f} s: proxy (in-process), DPoP-bound token with a proof each")
            dpop_url = f"{wasm.url}/orders/1"
            attack_dpop(vegeta, dpop_key, dpop_url, bound, rate, min(2.0, ctx.options.warmup))
            measured["proxy (in-process), DPoP"] = latency_ms(attack_dpop(vegeta, dpop_key, dpop_url, bound, rate,
                                                                          seconds))
            raw[f"latency_ms_at_{rate}"] = measured
            base = measured["direct"]
            for name in ("nginx", "proxy (in-process)", "proxy (REST)"):
                m = measured[name]
                aims = (Aim("<=", 0.5), Aim("<=", 2.0)) if rate == RATE and name != "nginx" else (None, None)
                figures += [Figure(f"{rate}/s, {name}: added p50", m["p50"] - base["p50"], "ms", aim=aims[0]),
                            Figure(f"{rate}/s, {name}: added p99", m["p99"] - base["p99"], "ms", aim=aims[1]),
                            Figure(f"{rate}/s, {name}: answered in time", m["success"] * 100, "%")]
            with_dpop, bearer = measured["proxy (in-process), DPoP"], measured["proxy (in-process)"]
            figures += [Figure(f"{rate}/s, DPoP vs bearer (in-process): added p50", with_dpop["p50"] - bearer["p50"],
                               "ms", note="the proof check (ES256 verify, ath, htu) and its replay cache"),
                        Figure(f"{rate}/s, DPoP vs bearer (in-process): added p99", with_dpop["p99"] - bearer["p99"],
                               "ms"),
                        Figure(f"{rate}/s, proxy (in-process), DPoP: answered in time", with_dpop["success"] * 100,
                               "%")]
            figures.append(Figure(f"{rate}/s, direct: p50", base["p50"], "ms", note=f"p99 {base['p99']:.2f} ms"))
        alone = policy_alone_us(broker.url, sa.read_text().strip(), opa.url)
        raw["policy_alone_us"] = alone
        figures += [Figure("policy alone, in-process (Wasm, wasmtime)", alone["in_process_us"], "us"),
                    Figure("policy alone, OPA REST API", alone["rest_us"], "us")]
        for name, proc in (("in-process", wasm), ("REST", rest)):
            figures.append(Figure(f"policy time inside the proxy under the load runs, {name}, mean",
                                  policy_mean_us(proc.metrics_url), "us"))
        figures.append(Figure("proxy RSS after the load (in-process)", rss_mib(wasm.pid), "MiB"))
        figures.append(Figure("proxy RSS after the load (REST)", rss_mib(rest.pid), "MiB"))
        ctx.say(f"   starting {PROXIES_FOR_REVOCATION} proxies for the revocation run")
        fleet = []
        for i in range(PROXIES_FOR_REVOCATION):
            # each proxy with its own pod's token, as in a cluster: the broker bounds event streams
            # per pod, and per subject only for tokens bound to no pod
            own_sa = work / f"proxy-sa-{i}"
            own_sa.write_text(cluster.issuer.mint("demo", "orders", ttl=3600,
                                                  pod=PodRef(f"orders-{i}", str(uuid.uuid4()))))
            p = ProxyProcess(broker_url=broker.url, audiences=["orders-api"], sa_token_file=own_sa,
                             log_path=work / f"proxy-{i}.log", upstream=upstream)
            started.append(p)
            fleet.append(p.start(timeout=120))
        for p in fleet:  # each proxy has verified the token once: the revocation must beat a warm cache
            httpx.get(p.url + "/orders/1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        reach, refused = revocation_reach(fleet, broker.url, token)
        raw["revocation_reach_s"] = reach
        raw["refused_after"] = refused
        if len(reach) < len(fleet) or refused < len(fleet):
            notes.append(f"{len(reach)} of {len(fleet)} proxies applied the revocation within 10 s; "
                         f"{refused} refused the revoked subject's token afterwards")
        if reach:
            figures.append(Figure(f"revocation reaching {len(fleet)} proxies, p99", percentile(reach, 99) * 1000,
                                  "ms", aim=Aim("<=", 100)))
            figures.append(Figure("revocation reach, p50", percentile(reach, 50) * 1000, "ms"))
        notes.append(f"open loop at {RATE} requests/s (vegeta), {seconds:.0f} s per target after a short warm-up; "
                     "added = the target's percentile minus the same percentile straight to the upstream (nginx "
                     "returning 200); revocation reach = from the admin call to the time in each proxy's log line "
                     "`events.applied` (one machine, one clock); 'answered in time' = answered within vegeta's "
                     "5 s timeout")
    finally:
        for proc in reversed(started):
            proc.stop(timeout=5)
        broker.stop(timeout=5)
        opa.stop()
    return SectionResult("proxy", TITLE, figures, notes, raw=raw)
