"""Section: latency at a fixed request rate (open loop, vegeta) for issuance (`POST /token` on
SQLite), the webhook (`POST /mutate` over HTTPS) and the access proxy (in-process policy, nginx
upstream): each target's capacity, then 50% and 90% of it, p50/p99/p99.9 (bench/openloop.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

from bench import openloop
from bench.context import Context
from bench.injector_bench import admission_review, realistic_pod, start_injector
from bench.issuance import FORM, broker, opa_and_cluster, request_token
from bench.proxy_section import NGINX_CONF, access_token, vegeta_bin
from bench.report import Figure, SectionResult, unavailable
from bench.stack import POLICIES, Cluster, fresh_dir, sqlite_url, start_broker, start_opa
from jitmesh.procs import ManagedProcess, free_port, wait_http
from proxy.process import ProxyProcess

TITLE = "7b. Latency at a fixed rate (open loop): issuance, webhook, proxy"


def figures_of(name: str, runs: dict[str, openloop.RunSummary]) -> list[Figure]:
    """Capacity, then p50/p99/p99.9 and the share answered OK at each fixed rate."""
    capacity = runs["capacity"]
    out = [Figure(f"{name}: capacity", capacity.ok_per_second, "/s",
                  note=f"{openloop.CAPACITY_WORKERS} workers, no rate limit (closed loop)")]
    for label, run in runs.items():
        if label == "capacity":
            continue
        at = f"{name} at {label} ({run.offered_rate:,.0f}/s)"
        ok_pct = 100 * run.ok / run.requests if run.requests else 0.0
        out += [Figure(f"{at}: p50", run.p50_ms, "ms"),
                Figure(f"{at}: p99", run.p99_ms, "ms"),
                Figure(f"{at}: p99.9", run.p999_ms, "ms",
                       note="" if ok_pct >= 99.9 else f"{ok_pct:.1f}% answered OK")]
    return out


@contextlib.contextmanager
def issuance_target(ctx: Context, work: Path) -> Iterator[openloop.Target]:
    with opa_and_cluster(ctx, "latency-issuance") as setup, \
            broker(ctx, setup, "broker-latency", sqlite_url(setup.dir)) as proc:
        request_token(proc, setup.body)
        body = work / "token-body"
        body.write_text(setup.body)
        yield openloop.Target("issuance", "POST", f"{proc.url}/token", (f"Content-Type: {FORM}",), body)


@contextlib.contextmanager
def webhook_target(work: Path) -> Iterator[openloop.Target]:
    injector, port, certs = start_injector(work)
    try:
        wait_http(f"https://127.0.0.1:{port}/readyz", timeout=30, proc=injector.proc,
                  verify=ssl.create_default_context(cafile=str(certs.ca_file)))
        body = work / "admission-review.json"
        body.write_text(json.dumps(admission_review(realistic_pod())))
        yield openloop.Target("webhook", "POST", f"https://127.0.0.1:{port}/mutate",
                              ("Content-Type: application/json",), body, root_certs=certs.ca_file)
    finally:
        injector.stop()


@contextlib.contextmanager
def proxy_target(work: Path, nginx: str) -> Iterator[openloop.Target]:
    opa = start_opa(work)
    cluster = Cluster(work)
    started: list[ManagedProcess] = []
    try:
        opa_bin = os.environ.get("JITMESH_OPA_BIN") or ""
        the_broker = start_broker(work, "broker", opa_url=opa.url, cluster=cluster,
                                  store_url=f"sqlite:///{work}/b.db",
                                  extra=["--access-policy-dir", str(POLICIES),
                                         *(["--opa-bin", opa_bin] if opa_bin else [])])
        started.append(the_broker)
        up, hop = free_port(), free_port()
        (work / "nginx").mkdir(exist_ok=True)
        conf = work / "nginx" / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=work / "nginx", up=up, hop=hop))
        web = ManagedProcess("nginx", [nginx, "-p", str(work / "nginx"), "-c", str(conf), "-e",
                                       str(work / "nginx" / "error.log")], work / "nginx" / "out.log").start()
        started.append(web)
        wait_http(f"http://127.0.0.1:{up}/", proc=web.proc)
        sa = work / "proxy-sa"
        sa.write_text(cluster.issuer.mint("demo", "orders", ttl=3600))
        proxy = ProxyProcess(broker_url=the_broker.url, audiences=["orders-api"], sa_token_file=sa,
                             log_path=work / "proxy.log", upstream=f"http://127.0.0.1:{up}")
        started.append(proxy)
        proxy.start(timeout=60)
        token = access_token(the_broker.url, cluster)
        yield openloop.Target("proxy", "GET", f"{proxy.url}/orders/1", (f"Authorization: Bearer {token}",))
    finally:
        for proc in reversed(started):
            proc.stop(timeout=5)
        opa.stop()


def run(ctx: Context) -> SectionResult:
    vegeta = vegeta_bin(ctx)
    if vegeta is None:
        return unavailable("latency", TITLE, "needs vegeta (built by the bench with `go install` when Go is present)")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    seconds, warmup = ctx.options.duration, min(2.0, ctx.options.warmup)
    figures: list[Figure] = []
    raw: dict[str, object] = {}
    notes = [f"open loop: vegeta sends at a fixed rate whatever the answers take, {seconds:g} s per rate, pinned "
             "to the client's CPU as wrk is; capacity is vegeta's own closed-loop rate with "
             f"{openloop.CAPACITY_WORKERS} workers, so 50% and 90% are of what this machine served just before; "
             "p99.9 is the nearest-rank percentile of every request sent"]

    def measure(target: openloop.Target, work: Path) -> None:
        runs = openloop.measure(vegeta, target, seconds=seconds, warmup=warmup, workdir=work, say=ctx.say)
        raw[target.name] = {label: r.as_dict() for label, r in runs.items()}
        figures.extend(figures_of(target.name, runs))

    work = fresh_dir(ctx.workdir, "latency-issuance")
    with issuance_target(ctx, work) as target:
        measure(target, work)
    work = fresh_dir(ctx.workdir, "latency-webhook")
    with webhook_target(work) as target:
        measure(target, work)
    if nginx is None:
        notes.append("proxy not measured: needs nginx as the upstream (apt-get install nginx)")
    else:
        work = fresh_dir(ctx.workdir, "latency-proxy")
        with proxy_target(work, nginx) as target:
            measure(target, work)
    return SectionResult("latency", TITLE, figures, notes, raw=raw)
