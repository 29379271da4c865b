"""Sections 1-3: `POST /token` under 32 concurrent clients, the same against a bare
OPA query of the same policy and input, on PostgreSQL beside SQLite, and with
shadow mode on beside off."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import external, pg, procstat, prom, wrk
from bench.context import Context, Options
from bench.report import Aim, Figure, SectionResult, unavailable
from bench.stack import (
    POLICIES,
    Cluster,
    Workload,
    bench_pod,
    fresh_dir,
    missing_flags,
    policy_input,
    sqlite_url,
    start_broker,
    start_opa,
    token_request_body,
)
from jitmesh import dpop
from jitmesh.opa_server import OPAServer
from pdp.process import BrokerProcess

TITLE = "1. Issuance: POST /token on SQLite, beside a bare OPA query"
PG_TITLE = "2. Issuance on PostgreSQL beside SQLite"
SHADOW_TITLE = "3. Shadow mode on beside off"

POLICY_PATH = "jitmesh/authz/decision"
CANDIDATE_PATH = "jitmesh/candidate/authz/decision"
FORM = "application/x-www-form-urlencoded"
AIM_RATE = Aim(">=", 1000)
AIM_P99_MS = Aim("<", 20)
AIM_SHADOW_COST_PCT = Aim("<", 10)
AIM_DPOP_COST_PCT = Aim("<=", 15)


@dataclass
class LoadRun:
    """One measured wrk run and the CPU the processes under test spent during it."""

    result: wrk.WrkResult
    cpu_s: dict[str, float] = field(default_factory=dict)
    mean_inside_ms: dict[str, float] = field(default_factory=dict)  # broker histograms: handler, opa_call

    def cpu_ms_per_request(self, name: str) -> float | None:
        ok = self.result.ok_requests
        return None if name not in self.cpu_s or ok == 0 else self.cpu_s[name] * 1000 / ok

    def as_dict(self) -> dict[str, Any]:
        return {**self.result.as_dict(), "server_cpu_s": self.cpu_s, "broker_mean_ms": self.mean_inside_ms}


def drive(ctx: Context, label: str, url: str, body: str | Path, content_type: str,
          watch: dict[str, int], metrics_url: str | None = None, duration: float | None = None,
          warmup: bool = True, line_header: str | None = None) -> LoadRun:
    """Warm up, then measure `url` for the configured time; `watch` names process groups
    whose CPU seconds are counted over the measured part, and the broker at `metrics_url`
    tells how long its handler and its OPA calls took over the same part."""
    opts = ctx.options
    scratch = ctx.workdir
    seconds = opts.duration if duration is None else duration
    if warmup and opts.warmup > 0:
        ctx.say(f"   {label}: warm-up {opts.warmup:.0f} s")
        wrk.run(url, body, content_type, connections=opts.connections, duration_s=opts.warmup, workdir=scratch)
    ctx.say(f"   {label}: {opts.connections} clients for {seconds:.0f} s")
    metrics_before = prom.scrape(metrics_url) if metrics_url else {}
    before = {name: procstat.group_cpu_seconds(pgid) for name, pgid in watch.items()}
    result = wrk.run(url, body, content_type, connections=opts.connections, duration_s=seconds,
                     workdir=scratch, tick=ctx.ticker(label, seconds), line_header=line_header)
    cpu = {name: procstat.group_cpu_seconds(pgid) - before[name] for name, pgid in watch.items()}
    inside: dict[str, float] = {}
    if metrics_url:
        metrics_after = prom.scrape(metrics_url)
        for key, histogram in (("handler", prom.REQUEST), ("opa_call", prom.OPA_CALL)):
            value = prom.mean_ms(metrics_before, metrics_after, histogram)
            if value is not None:
                inside[key] = value
    ctx.say(f"   {label}: {result.ok_per_second:,.0f}/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
            f"{result.errors} errors")
    return LoadRun(result, cpu, inside)


def opa_query(opa: OPAServer, path: str, input_doc: dict[str, Any]) -> Any:
    r = httpx.post(f"{opa.url}/v1/data/{path}", json={"input": input_doc}, timeout=10)
    r.raise_for_status()
    return r.json().get("result")


def request_token(broker: BrokerProcess, body: str) -> dict[str, Any]:
    r = httpx.post(f"{broker.url}/token", content=body, headers={"Content-Type": FORM}, timeout=10)
    if r.status_code != 200:
        raise RuntimeError(f"POST /token answered {r.status_code} before the run: {r.text[:300]}")
    doc: dict[str, Any] = r.json()
    return doc


@dataclass
class Setup:
    """OPA on policies/, the dev cluster issuer and a subject token for the bench workload."""

    dir: Path
    cluster: Cluster
    opa: OPAServer
    workload: Workload
    body: str
    opa_input: dict[str, Any]


@contextlib.contextmanager
def opa_and_cluster(ctx: Context, name: str) -> Iterator[Setup]:
    directory = fresh_dir(ctx.workdir, name)
    workload = Workload()
    cluster = Cluster(directory)
    pod = bench_pod(workload)
    token = cluster.subject_token(workload, pod)
    opa = start_opa(directory)
    try:
        setup = Setup(directory, cluster, opa, workload, token_request_body(token, workload),
                      policy_input(workload, pod))
        decision = opa_query(opa, POLICY_PATH, setup.opa_input)
        if not isinstance(decision, dict) or decision.get("allow") is not True:
            raise RuntimeError(f"the shipped policy does not allow the bench workload {workload}: "
                               f"{json.dumps(decision)[:300]}")
        yield setup
    finally:
        opa.stop()


@contextlib.contextmanager
def broker(ctx: Context, setup: Setup, name: str, store_url: str, extra: Sequence[str] = ()) -> Iterator[BrokerProcess]:
    reason = missing_flags("broker", ["--opa-url", "--jwks-file", "--store", *[f for f in extra if f[:2] == "--"]])
    if reason:
        raise RuntimeError(reason)
    ctx.say(f"   starting broker ({name})")
    proc = start_broker(setup.dir, name, opa_url=setup.opa.url, cluster=setup.cluster, store_url=store_url,
                        extra=extra)
    try:
        yield proc
    finally:
        proc.stop()


def drive_broker(ctx: Context, setup: Setup, proc: BrokerProcess, label: str) -> tuple[LoadRun, dict[str, Any]]:
    issued = request_token(proc, setup.body)
    run = drive(ctx, label, f"{proc.url}/token", setup.body, FORM, {"broker": proc.pid, "opa": setup.opa.pid},
                metrics_url=proc.url)
    if run.result.errors_status:
        # wrk counts but does not show failed answers: show one
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(f"{proc.url}/token", content=setup.body, headers={"Content-Type": FORM}, timeout=10)
            ctx.say(f"   a request after the run answered {r.status_code}: {r.text[:200]}")
    return run, issued


FLEET_TOKENS = (500, 6000)  # bounds on subject tokens minted for the fleet run (about 1 ms each)


def drive_fleet(ctx: Context, setup: Setup, proc: BrokerProcess, expected_rate: float) -> tuple[LoadRun, int]:
    """The broker, already warm, with a different pod's subject token on every request: what
    it costs when no verified token can be remembered. Returns the run and the token count."""
    seconds = max(3.0, ctx.options.duration / 2)
    count = int(min(FLEET_TOKENS[1], max(FLEET_TOKENS[0], 1.3 * expected_rate * seconds)))
    ctx.say(f"   minting {count} subject tokens, one per pod")
    bodies = setup.dir / "fleet-bodies.txt"
    with bodies.open("w") as f:
        for i in range(count):
            token = setup.cluster.subject_token(setup.workload, bench_pod(setup.workload, i))
            f.write(token_request_body(token, setup.workload) + "\n")
    run = drive(ctx, "broker, a new pod's token each request", f"{proc.url}/token", bodies, FORM,
                {"broker": proc.pid, "opa": setup.opa.pid}, metrics_url=proc.url, duration=seconds, warmup=False)
    return run, count


DPOP_PROOFS = (2000, 40000)  # bounds on the proofs signed for the DPoP run (each is spent once)


def drive_dpop(ctx: Context, setup: Setup, proc: BrokerProcess, expected_rate: float) -> tuple[LoadRun, int]:
    """The broker, already warm, with the same subject token and a fresh DPoP proof on every
    request (RFC 9449: each proof's jti is spent in the store). Returns the run and the proof count."""
    seconds = ctx.options.duration
    count = int(min(DPOP_PROOFS[1], max(DPOP_PROOFS[0], 1.5 * expected_rate * seconds)))
    ctx.say(f"   signing {count} DPoP proofs, one per request")
    key = dpop.new_key()
    lines = setup.dir / "dpop-lines.txt"
    url = f"{proc.url}/token"
    htu = httpx.get(f"{proc.url}/.well-known/oauth-authorization-server", timeout=10).json()["token_endpoint"]
    with lines.open("w") as f:
        for _ in range(count):
            f.write(f"{dpop.make_proof(key, 'POST', htu)} {setup.body}\n")
    run = drive(ctx, "broker with a DPoP proof each request", url, lines, FORM,
                {"broker": proc.pid, "opa": setup.opa.pid}, metrics_url=proc.url, warmup=False,
                line_header="DPoP")
    return run, count


def dpop_figures(run: LoadRun, base: LoadRun, proofs: int) -> tuple[list[Figure], str]:
    r, b = run.result, base.result
    label = "without DPoP"
    cost = (1 - r.ok_per_second / b.ok_per_second) * 100 if b.ok_per_second else None
    figures = [Figure("issuances/s with DPoP", r.ok_per_second, "/s", b.ok_per_second, label, AIM_RATE),
               Figure("throughput cost of DPoP", cost, "%", aim=AIM_DPOP_COST_PCT,
                      note="1 - with/without; the proof check and its jti written to the store"),
               Figure("p99 with DPoP", r.p99_ms, "ms", b.p99_ms, label, AIM_P99_MS),
               Figure("errors with DPoP", r.errors, "", note=f"of {r.requests:,} requests" if r.errors else "")]
    cpu = run.cpu_ms_per_request("broker")
    if cpu is not None:
        figures.append(Figure("broker CPU with DPoP", cpu, "ms", base.cpu_ms_per_request("broker"), label))
    note = (f"'with DPoP': the same subject token, a distinct ES256 proof per request ({proofs:,} signed before "
            "the run, each accepted once), measured on the same broker right after 'one token'")
    return figures, note


def fleet_figures(run: LoadRun, base: LoadRun, tokens: int) -> tuple[list[Figure], str]:
    r = run.result
    reused = max(0, r.requests - tokens) / r.requests if r.requests else 0.0
    label = "one token"
    figures = [Figure("issuances/s, new pod each request", r.ok_per_second, "/s", base.result.ok_per_second, label,
                      AIM_RATE),
               Figure("p99, new pod each request", r.p99_ms, "ms", base.result.p99_ms, label, AIM_P99_MS)]
    cpu = run.cpu_ms_per_request("broker")
    if cpu is not None:
        figures.append(Figure("broker CPU, new pod each request", cpu, "ms", base.cpu_ms_per_request("broker"),
                              label))
    note = (f"'new pod each request': {tokens:,} subject tokens of distinct pods sent in turn, so the broker "
            f"verifies nearly every one ({reused:.0%} of requests came round to a token again); 'one token': "
            "the same pod's token every time, as one sidecar refreshing")
    return figures, note


def sqlite_baseline(ctx: Context) -> LoadRun:
    """The SQLite broker figures, measured once per `python -m bench` and shared."""
    cached = ctx.shared.get("sqlite_run")
    if isinstance(cached, LoadRun):
        return cached
    with opa_and_cluster(ctx, "issuance-sqlite-baseline") as setup, \
            broker(ctx, setup, "broker-sqlite", sqlite_url(setup.dir)) as proc:
        run, issued = drive_broker(ctx, setup, proc, "broker on SQLite")
    remember_sqlite(ctx, run, issued)
    return run


def remember_sqlite(ctx: Context, run: LoadRun, issued: dict[str, Any]) -> None:
    ctx.shared["sqlite_run"] = run
    ctx.shared["issuance_rate"] = run.result.ok_per_second
    ctx.shared["issued_expires_in"] = issued.get("expires_in")
    ctx.shared["issuance_missed_aim"] = not (AIM_RATE.met(run.result.ok_per_second)
                                             and AIM_P99_MS.met(run.result.p99_ms))


def load_figures(run: LoadRun, base: LoadRun | None, base_label: str, rate_name: str,
                 rate_aim: Aim | None = AIM_RATE, clients: int = Options.connections) -> list[Figure]:
    """The closed-loop run's figures. Its percentiles are queueing at saturation (each client
    asks again as soon as it is answered), not latency at a load: section 7b measures that."""
    r, b = run.result, (base.result if base else None)
    return [
        Figure(rate_name, r.ok_per_second, "/s", b.ok_per_second if b else None, base_label, rate_aim),
        Figure(f"p50 at {clients} clients (queueing)", r.p50_ms, "ms", b.p50_ms if b else None, base_label),
        Figure(f"p99 at {clients} clients (queueing at saturation)", r.p99_ms, "ms", b.p99_ms if b else None,
               base_label, AIM_P99_MS, note="closed loop, not latency: see section 7b for latency at a fixed rate"),
        Figure("errors", r.errors, "", b.errors if b else None, base_label,
               note=f"of {r.requests:,} requests" if r.errors else ""),
    ]


def cpu_figures(run: LoadRun, base: LoadRun | None = None, base_label: str = "") -> list[Figure]:
    """CPU per issuance, and where a request's time goes: the client's mean latency split into
    waiting before the broker's handler runs, the handler, and the OPA call inside it; each
    beside the same figure of `base` when given."""
    cpus = len(os.sched_getaffinity(0))

    def fig(name: str, value: float | None, base_value: float | None, unit: str = "ms", **kw: Any) -> Figure:
        return Figure(name, value, unit, base_value if base else None, base_label if base else "", **kw)

    def inside(r: LoadRun | None, key: str) -> float | None:
        return None if r is None else r.mean_inside_ms.get(key)

    def queued(r: LoadRun | None) -> float | None:
        handler = inside(r, "handler")
        return None if r is None or handler is None else max(0.0, r.result.mean_ms - handler)

    out = []
    if inside(run, "handler") is not None:
        out.append(fig("mean latency seen by clients", run.result.mean_ms, base.result.mean_ms if base else None))
        out.append(fig("  of which queued before handler", queued(run), queued(base),
                       note="accept, parse, event-loop wait"))
        out.append(fig("  of which in handler", inside(run, "handler"), inside(base, "handler"),
                       note="broker's jitmesh_token_request_seconds"))
    if inside(run, "opa_call") is not None:
        out.append(fig("    of which OPA call", inside(run, "opa_call"), inside(base, "opa_call"),
                       note="broker's jitmesh_opa_request_seconds"))
    for name, label in (("broker", "broker CPU per issuance"), ("opa", "OPA CPU per issuance")):
        value = run.cpu_ms_per_request(name)
        if value is not None:
            out.append(fig(label, value, base.cpu_ms_per_request(name) if base else None,
                           note=f"{run.cpu_s[name] / run.result.duration_s:.2f} cores busy"))
    ceiling = cpu_bound_ceiling(run, cpus)
    if ceiling is not None:
        out.append(fig("CPU-bound ceiling", ceiling, cpu_bound_ceiling(base, cpus) if base else None, "/s",
                       aim=AIM_RATE, note="CPUs / (broker + OPA CPU per issuance): the rate if nothing else ran"))
    return out


def cpu_bound_ceiling(run: LoadRun, cpus: int) -> float | None:
    """Issuances/s the machine's CPUs allow at the CPU each issuance cost broker and OPA: on a
    shared machine this moves less than the throughput does."""
    broker_ms, opa_ms = run.cpu_ms_per_request("broker"), run.cpu_ms_per_request("opa")
    if broker_ms is None or opa_ms is None or broker_ms + opa_ms <= 0:
        return None
    return cpus * 1000 / (broker_ms + opa_ms)


def client_note(run: LoadRun) -> str:
    share = run.result.client_cpu_s / run.result.duration_s if run.result.duration_s else 0
    return (f"client: wrk, 1 thread pinned to one CPU, {share:.0%} of a core "
            f"(a Python client would take a core from the broker)")


def run_sqlite(ctx: Context) -> SectionResult:
    with opa_and_cluster(ctx, "issuance") as setup:
        with broker(ctx, setup, "broker-sqlite", sqlite_url(setup.dir)) as proc:
            broker_run, issued = drive_broker(ctx, setup, proc, "broker on SQLite")
            dpop_run, dpop_proofs = drive_dpop(ctx, setup, proc, broker_run.result.ok_per_second)
            fleet_run, fleet_tokens = drive_fleet(ctx, setup, proc, broker_run.result.ok_per_second)
        remember_sqlite(ctx, broker_run, issued)
        opa_url = f"{setup.opa.url}/v1/data/{POLICY_PATH}?strict-builtin-errors=true"  # as the broker asks
        opa_run = drive(ctx, "bare OPA query", opa_url, json.dumps({"input": setup.opa_input}),
                        "application/json", {"opa": setup.opa.pid})
    figures = load_figures(broker_run, opa_run, "bare OPA", "issuances/s", clients=ctx.options.connections)
    ratio = (opa_run.result.ok_per_second / broker_run.result.ok_per_second
             if broker_run.result.ok_per_second else None)
    figures.append(Figure("bare OPA ÷ broker throughput", ratio, "x",
                          note="how much the broker adds beyond the policy query"))
    figures += cpu_figures(broker_run)
    opa_cpu = opa_run.cpu_ms_per_request("opa")
    if opa_cpu is not None:
        figures.append(Figure("OPA CPU per bare query", opa_cpu, "ms"))
    more, fleet_note = fleet_figures(fleet_run, broker_run, fleet_tokens)
    figures += more
    more, dpop_note = dpop_figures(dpop_run, broker_run, dpop_proofs)
    figures += more
    notes = [f"{ctx.options.connections} clients, {ctx.options.duration:.0f} s after {ctx.options.warmup:.0f} s "
             f"warm-up; {setup.workload.subject} asks audience {setup.workload.audience} "
             f"scopes '{' '.join(setup.workload.scopes)}', granted expires_in={issued.get('expires_in')}",
             fleet_note, dpop_note, client_note(broker_run)]
    return SectionResult("issuance", TITLE, figures, notes,
                         raw={"broker": broker_run.as_dict(), "bare_opa": opa_run.as_dict(),
                              "fleet": {**fleet_run.as_dict(), "tokens": fleet_tokens},
                              "dpop": {**dpop_run.as_dict(), "proofs": dpop_proofs}, "issued": {
                             k: issued.get(k) for k in ("expires_in", "scope", "token_type")}})


def run_postgres(ctx: Context) -> SectionResult:
    reason = pg.unavailable_reason()
    if reason:
        return unavailable("postgres", PG_TITLE, reason)
    base = sqlite_baseline(ctx)
    with opa_and_cluster(ctx, "issuance-postgres") as setup, pg.server(setup.dir) as dsn, \
            broker(ctx, setup, "broker-postgres", dsn) as proc:
        run, _ = drive_broker(ctx, setup, proc, "broker on PostgreSQL")
    figures = (load_figures(run, base, "SQLite", "issuances/s", clients=ctx.options.connections)
               + cpu_figures(run, base, "SQLite"))
    notes = ["PostgreSQL started by the bench from the system binaries (tests/fixtures/postgres.py), "
             "fsync on as in production, on the same 2 CPUs as broker and OPA", client_note(run)]
    store_figures, store_doc = store_alone(ctx)
    figures += store_figures
    if "postgres_unavailable" in store_doc:
        notes.append(f"store alone on PostgreSQL not measured: {store_doc['postgres_unavailable']}")
    elif store_doc:
        notes.append(f"store alone: bench/store_bench.py, {store_doc.get('writers')} concurrent durable audit "
                     "appends, the ceiling the store puts on issuance")
    return SectionResult("postgres", PG_TITLE, figures, notes,
                         raw={"postgres": run.as_dict(), "sqlite": base.as_dict(), "store_bench": store_doc})


def store_alone(ctx: Context) -> tuple[list[Figure], dict[str, Any]]:
    """Audit appends with no broker in front (bench/store_bench.py's run()), PostgreSQL beside SQLite."""
    fn = external.load_run("bench.store_bench")
    if isinstance(fn, str):
        return [], {"postgres_unavailable": fn}
    ctx.say("   store alone: bench/store_bench.py")
    doc = external.call_with(fn, {"seconds": min(ctx.options.duration, 5.0)})
    figures = []
    for key, name, unit in (("appends_per_s", "store alone: audit appends/s", "/s"),
                            ("p50_ms", "store alone: append p50", "ms"), ("p99_ms", "store alone: append p99", "ms")):
        if f"postgres_{key}" in doc:
            figures.append(Figure(name, doc[f"postgres_{key}"], unit, doc.get(f"sqlite_{key}"), "SQLite"))
    return figures, doc


def wait_for_wasm_candidate(proc: BrokerProcess, timeout: float = 120.0) -> str:
    """Until the broker built its candidate as Wasm (it asks OPA until then), or said it cannot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        said = proc.output()
        if "shadow.wasm_loaded" in said:
            return "candidate evaluated in the broker as Wasm (--shadow-policy-dir)"
        if "shadow.wasm_unavailable" in said:
            return "the broker could not build the candidate as Wasm: it asked OPA (see its log)"
        time.sleep(0.2)
    return f"the broker had not built the candidate as Wasm after {timeout:g} s: measured while asking OPA"


def run_shadow(ctx: Context) -> SectionResult:
    """Shadow off and on measured back to back on the same OPA, so drifting load on a shared
    machine moves both alike (the cost aim is a 10% difference)."""
    reason = missing_flags("broker", ["--shadow-policy-path"])
    if reason:
        return unavailable("shadow", SHADOW_TITLE, reason)
    with opa_and_cluster(ctx, "issuance-shadow") as setup:
        candidate = opa_query(setup.opa, CANDIDATE_PATH, setup.opa_input)
        if not isinstance(candidate, dict):
            return unavailable("shadow", SHADOW_TITLE, f"policies/ has no candidate at {CANDIDATE_PATH} "
                               f"(OPA answers {json.dumps(candidate)[:100]})")
        with broker(ctx, setup, "broker-shadow-off", sqlite_url(setup.dir, "off")) as off_proc:
            base, _ = drive_broker(ctx, setup, off_proc, "broker with shadow off")
        with broker(ctx, setup, "broker-shadow-on", sqlite_url(setup.dir, "on"),
                    ["--shadow-policy-path", CANDIDATE_PATH]) as proc:
            run, _ = drive_broker(ctx, setup, proc, "broker with shadow on")
        wasm_run, wasm_note = None, ""
        if missing_flags("broker", ["--shadow-policy-dir"]) is None:  # the candidate in-process, as Wasm
            with broker(ctx, setup, "broker-shadow-wasm", sqlite_url(setup.dir, "wasm"),
                        ["--shadow-policy-path", CANDIDATE_PATH, "--shadow-policy-dir", str(POLICIES)]) as proc:
                wasm_note = wait_for_wasm_candidate(proc)
                wasm_run, _ = drive_broker(ctx, setup, proc, "broker with shadow on, candidate in-process")
    figures = load_figures(run, base, "shadow off", "issuances/s", clients=ctx.options.connections)
    off = base.result.ok_per_second
    cost = (1 - run.result.ok_per_second / off) * 100 if off else None
    figures.append(Figure("throughput cost of shadow", cost, "%", aim=AIM_SHADOW_COST_PCT,
                          note="1 - on/off; negative means within noise"))
    cpus = len(os.sched_getaffinity(0))
    ceiling_on, ceiling_off = cpu_bound_ceiling(run, cpus), cpu_bound_ceiling(base, cpus)
    if ceiling_on and ceiling_off:
        figures.append(Figure("CPU cost of shadow", (1 - ceiling_on / ceiling_off) * 100, "%",
                              aim=AIM_SHADOW_COST_PCT, note="1 - CPU-bound ceiling on/off: moves less with load"))
    figures.append(Figure("p99 added by shadow", run.result.p99_ms - base.result.p99_ms, "ms"))
    if wasm_run is not None:
        figures.append(Figure("throughput cost of shadow, Wasm candidate",
                              (1 - wasm_run.result.ok_per_second / off) * 100 if off else None, "%",
                              aim=AIM_SHADOW_COST_PCT, note="--shadow-policy-dir: evaluated in the broker"))
        ceiling_wasm = cpu_bound_ceiling(wasm_run, cpus)
        if ceiling_wasm and ceiling_off:
            figures.append(Figure("CPU cost of shadow, Wasm candidate", (1 - ceiling_wasm / ceiling_off) * 100, "%",
                                  aim=AIM_SHADOW_COST_PCT, note="1 - CPU-bound ceiling Wasm/off"))
        figures.append(Figure("p99 added by shadow, Wasm candidate", wasm_run.result.p99_ms - base.result.p99_ms,
                              "ms"))
    figures += cpu_figures(run, base, "shadow off")
    verdict = "allows" if candidate.get("allow") is True else "denies"
    notes = [f"candidate {CANDIDATE_PATH} {verdict} the bench request; shadow off measured just before, "
             "same OPA, SQLite", client_note(run)]
    raw = {"shadow_on": run.as_dict(), "shadow_off": base.as_dict()}
    if wasm_run is not None:
        raw["shadow_on_wasm"] = wasm_run.as_dict()
        notes.append(wasm_note)
    return SectionResult("shadow", SHADOW_TITLE, figures, notes, raw=raw)
