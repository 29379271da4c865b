"""Section: `POST /token` throughput while strangers press on the broker, beside the same
broker quiet. The pressure: 2,000 idle revocation event streams, one per workload (each its
own subject, as 2,000 sidecars), and a fixed rate of admin calls with garbage bearer tokens."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.context import Context
from bench.issuance import broker, drive_broker, opa_and_cluster
from bench.report import Aim, Figure, SectionResult
from bench.stack import Workload, bench_pod, sqlite_url
from pdp.process import BrokerProcess

TITLE = "3b. Issuance while strangers press: idle event streams and garbage admin tokens"
IDLE_STREAMS = 2000
GARBAGE_PER_SECOND = 200
AIM_RATIO = Aim(">=", 0.9)  # within 10% of the quiet figure


@dataclass
class Pressure:
    """What the load thread saw: streams held open, garbage calls sent and their answers."""
    streams_open: int = 0
    streams_refused: dict[str, int] = field(default_factory=dict)
    garbage_sent: int = 0
    garbage_seconds: float = 0.0
    garbage_answers: dict[str, int] = field(default_factory=dict)
    error: str = ""


async def _open_stream(host: str, port: int, token: str, pressure: Pressure,
                       held: list[asyncio.StreamWriter]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write((f"GET /v1/revocations/events HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        await writer.drain()
        status = (await asyncio.wait_for(reader.readline(), 30)).decode(errors="replace").split(" ")
        code = status[1] if len(status) > 1 else "no answer"
    except (TimeoutError, OSError) as exc:
        pressure.streams_refused[type(exc).__name__] = pressure.streams_refused.get(type(exc).__name__, 0) + 1
        return
    if code == "200":
        pressure.streams_open += 1
        held.append(writer)  # idle from here on: nothing is read, the stream stays open
    else:
        pressure.streams_refused[code] = pressure.streams_refused.get(code, 0) + 1
        writer.close()


async def _garbage(url: str, rate: float, stop: threading.Event, pressure: Pressure) -> None:
    import httpx
    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=64)) as client:
        async def one() -> None:
            try:
                r = await client.get(f"{url}/v1/admin/audit",
                                     headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}"})
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            pressure.garbage_answers[key] = pressure.garbage_answers.get(key, 0) + 1

        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            pressure.garbage_sent += 1
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            # open loop: the next call leaves on schedule, whether or not the last was answered
            await asyncio.sleep(max(0.0, started + pressure.garbage_sent / rate - time.monotonic()))
        pressure.garbage_seconds = time.monotonic() - started
        await asyncio.gather(*pending, return_exceptions=True)


@contextlib.contextmanager
def pressing(proc: BrokerProcess, tokens: list[str], rate: float, ctx: Context) -> Iterator[Pressure]:
    """Hold the idle streams open and send the garbage calls, on a thread of its own, while
    the caller measures."""
    pressure = Pressure()
    stop = threading.Event()
    ready = threading.Event()
    host, port = "127.0.0.1", proc.port

    async def main() -> None:
        held: list[asyncio.StreamWriter] = []
        try:
            for start in range(0, len(tokens), 100):  # open in batches, as a fleet of sidecars would
                await asyncio.gather(*(_open_stream(host, port, t, pressure, held) for t in tokens[start:start + 100]))
            ready.set()
            await _garbage(proc.url, rate, stop, pressure)
        finally:
            ready.set()
            for w in held:
                w.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception as exc:  # shown in the section's notes
            pressure.error = f"{type(exc).__name__}: {exc}"
            ready.set()

    thread = threading.Thread(target=run, name="strangers", daemon=True)
    thread.start()
    ready.wait(300)
    ctx.say(f"   {pressure.streams_open} idle streams open; garbage admin calls at {rate:.0f}/s")
    try:
        yield pressure
    finally:
        stop.set()
        thread.join(30)


def run(ctx: Context) -> SectionResult:
    with opa_and_cluster(ctx, "strangers") as setup:
        ctx.say(f"   minting {IDLE_STREAMS} ServiceAccount tokens, one workload each")
        tokens = [setup.cluster.subject_token(w, bench_pod(w, i)) for i in range(IDLE_STREAMS)
                  for w in [Workload(namespace="idle", service_account=f"idle-{i:04d}")]]
        with broker(ctx, setup, "broker-strangers", sqlite_url(setup.dir)) as proc:
            quiet, _ = drive_broker(ctx, setup, proc, "broker, quiet")
            with pressing(proc, tokens, GARBAGE_PER_SECOND, ctx) as pressure:
                pressed, _ = drive_broker(ctx, setup, proc, "broker, pressed")
    q, p = quiet.result, pressed.result
    ratio = p.ok_per_second / q.ok_per_second if q.ok_per_second else None
    figures = [
        Figure("issuances/s under pressure", p.ok_per_second, "/s", q.ok_per_second, "quiet"),
        Figure("pressed ÷ quiet throughput", ratio, "x", aim=AIM_RATIO),
        Figure("p99 under pressure", p.p99_ms, "ms", q.p99_ms, "quiet"),
        Figure("idle event streams held open", float(pressure.streams_open), "", float(IDLE_STREAMS), "asked"),
        Figure("garbage admin calls sent per second",
               pressure.garbage_sent / pressure.garbage_seconds if pressure.garbage_seconds else None, "/s",
               float(GARBAGE_PER_SECOND), "asked"),
    ]
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(pressure.garbage_answers.items())) or "none"
    refused = ", ".join(f"{k}: {v}" for k, v in sorted(pressure.streams_refused.items())) or "none"
    notes = [f"{ctx.options.connections} clients on /token; {IDLE_STREAMS} streams asked, one per workload "
             f"(refused: {refused}); garbage admin calls at {GARBAGE_PER_SECOND}/s open loop, answered {answers}"]
    if pressure.error:
        notes.append(f"the pressure thread failed: {pressure.error}")
    return SectionResult("strangers", TITLE, figures, notes,
                         raw={"quiet": quiet.as_dict(), "pressed": pressed.as_dict(),
                              "streams_open": pressure.streams_open, "streams_refused": pressure.streams_refused,
                              "garbage_sent": pressure.garbage_sent, "garbage_answers": pressure.garbage_answers})
