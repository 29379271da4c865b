"""Brokered PostgreSQL logins (docs/contract.md §9): login issuance beside JWT issuance on the
same broker, and the time from a revocation to the login's terminated session, over 100
logins with an open session each. One real PostgreSQL (fsync on), one broker, OPA on policies/."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.context import Context
from bench.issuance import opa_and_cluster
from bench.report import Figure, SectionResult, unavailable
from bench.stack import ADMIN_TOKEN, Workload, bench_pod, missing_flags, sqlite_url, start_broker
from bench.stats import summarize
from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, POSTGRESQL_LOGIN_PREFIX, TOKEN_TYPE_JWT, TOKEN_TYPE_POSTGRESQL

TITLE = "9. Database logins: issuance beside JWTs, revocation to terminated session"
WORKLOAD = Workload(namespace="orders", service_account="api", audience="orders-db", scopes=("read",))
CONCURRENCY = 8
REVOKED_LOGINS = 100
TERMINATION_TIMEOUT_S = 10.0


_clients = threading.local()


def _issue(url: str, subject_token: str, token_type: str) -> tuple[float, dict[str, Any]]:
    client = getattr(_clients, "client", None)
    if client is None:  # one keep-alive client per thread, as a sidecar holds one
        client = _clients.client = httpx.Client(timeout=30)
    started = time.perf_counter()
    r = client.post(f"{url}/token", data={
        "grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
        "subject_token_type": TOKEN_TYPE_JWT, "audience": WORKLOAD.audience, "scope": "read",
        "requested_token_type": token_type})
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{token_type} issuance answered {r.status_code}: {r.text[:300]}")
    return elapsed, r.json()


def _load(seconds: float, ask: Callable[[], tuple[float, dict[str, Any]]]) -> tuple[float, list[float]]:
    """Requests per second and each latency, CONCURRENCY clients asking for `seconds`."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            latencies.append(ask()[0])
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        for f in [pool.submit(client) for _ in range(CONCURRENCY)]:
            f.result()
    return len(latencies) / (time.monotonic() - started), latencies


def _terminated(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


def run(ctx: Context) -> SectionResult:
    reason = missing_flags("broker", ["--targets-file"])
    if reason:
        return unavailable("dblogins", TITLE, reason)
    from tests.fixtures.postgres import PostgresServer
    from tests.integration.dblogins_support import make_target

    with opa_and_cluster(ctx, "dblogins") as setup:
        pg = PostgresServer(fsync=True).start()
        broker = None
        try:
            target = make_target(pg, setup.dir / "target", admin_pool=4)
            broker = start_broker(setup.dir, "broker", opa_url=setup.opa.url, cluster=setup.cluster,
                                  store_url=sqlite_url(setup.dir),
                                  extra=["--targets-file", str(target.targets_file)])
            token = setup.cluster.subject_token(WORKLOAD, bench_pod(WORKLOAD))
            seconds = ctx.options.duration
            ctx.say(f"   JWT issuance for {seconds:g} s")
            jwt_rate, jwt_lat = _load(seconds, lambda: _issue(broker.url, token, TOKEN_TYPE_JWT))
            ctx.say(f"   login issuance for {seconds:g} s")
            login_rate, login_lat = _load(seconds, lambda: _issue(broker.url, token, TOKEN_TYPE_POSTGRESQL))
            ctx.say(f"   {REVOKED_LOGINS} logins with an open session each, revoked one by one")
            revoke_ms = _revocations(broker.url, token)
        finally:
            if broker is not None:
                broker.stop()
            (Path(setup.dir) / "postgres.log").write_text(pg.output())
            pg.destroy()
    jwt_s, login_s, rev = summarize(jwt_lat), summarize(login_lat), summarize(revoke_ms)
    return SectionResult("dblogins", TITLE, figures=[
        Figure("JWT issuance rate", jwt_rate, "/s", note=f"{CONCURRENCY} clients, same broker"),
        Figure("login issuance rate", login_rate, "/s", baseline=jwt_rate, baseline_label="JWT"),
        Figure("JWT issuance p50", jwt_s.p50 * 1000, "ms"),
        Figure("JWT issuance p99", jwt_s.p99 * 1000, "ms"),
        Figure("login issuance p50", login_s.p50 * 1000, "ms", baseline=jwt_s.p50 * 1000, baseline_label="JWT"),
        Figure("login issuance p99", login_s.p99 * 1000, "ms", baseline=jwt_s.p99 * 1000, baseline_label="JWT"),
        Figure("revocation to terminated session p50", rev.p50, "ms"),
        Figure("revocation to terminated session p99", rev.p99, "ms", note=f"{rev.count} logins"),
    ], raw={"jwt": jwt_s.as_dict(), "login": login_s.as_dict(), "revocation_ms": rev.as_dict()})


def _revocations(url: str, token: str) -> list[float]:
    sessions = []
    for _ in range(REVOKED_LOGINS):
        body = _issue(url, token, TOKEN_TYPE_POSTGRESQL)[1]
        conn = psycopg.connect(host=body["host"], port=body["port"], dbname=body["dbname"], user=body["username"],
                               password=body["access_token"], autocommit=True)
        sessions.append((body["username"][len(POSTGRESQL_LOGIN_PREFIX):], conn))
    timings: list[float] = []
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for jti, conn in sessions:
        started = time.perf_counter()
        r = httpx.post(f"{url}/v1/admin/revocations", headers=headers, json={"jti": jti, "reason": "bench"},
                       timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"revocation answered {r.status_code}: {r.text[:300]}")
        deadline = time.monotonic() + TERMINATION_TIMEOUT_S
        while not _terminated(conn):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the session of login {jti} was not terminated within {TERMINATION_TIMEOUT_S}s")
            time.sleep(0.002)
        timings.append((time.perf_counter() - started) * 1000)
        conn.close()
    return timings
