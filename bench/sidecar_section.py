"""Section 4: the sidecar's resident memory and idle CPU with 3 audiences, measured
by bench/sidecar_bench.py's run(); the latency credential injection adds to a call
(bench/sidecar_upstream_bench.py); and how many sidecars one broker serves, derived from the
issuance rate measured here and the sidecar's refresh schedule."""

from __future__ import annotations

from dataclasses import dataclass

from bench import external
from bench.context import Context
from bench.issuance import sqlite_baseline
from bench.report import Aim, Figure, SectionResult
from bench.stack import fresh_dir

TITLE = "4. Sidecar: memory, idle CPU, sidecars per broker"
AUDIENCES = 3
DEFAULT_TTL = 300  # the broker's --default-ttl, when no issuance was measured
# Vault Agent, the sidecar users compare with, runs in 13-20 MiB
AIMS = {"rss_mb": Aim("<=", 15), "idle_cpu_pct": Aim("<", 0.5)}
VARIANTS = {"": {}, ", DPoP": {"dpop": True}, ", DPoP + upstream": {"dpop": True, "upstream": True}}


@dataclass(frozen=True)
class Capacity:
    """Sidecars one broker keeps supplied: each of a sidecar's audiences is refreshed once per
    mean refresh interval (TTL x the middle of the refresh window), so one sidecar asks
    audiences / interval times a second, and the broker's issuance rate divided by that is
    how many it serves when doing nothing else."""

    issuance_rate: float
    ttl_s: float
    window: tuple[float, float]
    audiences: int

    @property
    def refresh_interval_s(self) -> float:
        lo, hi = self.window
        return self.ttl_s * (lo + hi) / 2

    @property
    def per_sidecar_rate(self) -> float:
        return self.audiences / self.refresh_interval_s

    @property
    def sidecars(self) -> float:
        return self.issuance_rate / self.per_sidecar_rate


def refresh_window() -> tuple[float, float]:
    from sidecar.config import SidecarConfig
    return SidecarConfig.refresh_after  # the dataclass default: the window sidecars run with


def capacity_figures(ctx: Context) -> tuple[list[Figure], list[str]]:
    rate = ctx.shared.get("issuance_rate")
    if not isinstance(rate, float):
        ctx.say("   no issuance rate measured in this run yet: measuring the SQLite broker first")
        rate = sqlite_baseline(ctx).result.ok_per_second
    ttl = ctx.shared.get("issued_expires_in") or DEFAULT_TTL
    cap = Capacity(rate, float(ttl), refresh_window(), AUDIENCES)
    lo, hi = cap.window
    note = (f"sidecars per broker = issuances/s ({rate:,.0f}) x mean refresh interval "
            f"({ttl:.0f} s TTL x {(lo + hi) / 2:.2f}, the middle of the {lo}-{hi} refresh window) "
            f"/ {AUDIENCES} audiences, with the broker doing nothing else; halve it for headroom")
    return [Figure("mean refresh interval", cap.refresh_interval_s, "s"),
            Figure("sidecars one broker serves", cap.sidecars)], [note]


def run(ctx: Context) -> SectionResult:
    figures: list[Figure] = []
    notes: list[str] = []
    raw: dict[str, object] = {}
    fn = external.load_run("bench.sidecar_bench")
    if isinstance(fn, str):
        notes.append(f"memory and idle CPU not measured: {fn}")
    else:
        for label, kw in VARIANTS.items():
            doc = external.call_with(fn, {"workdir": fresh_dir(ctx.workdir, "sidecar" + label.replace(", ", "-")
                                                               .replace(" + ", "-").lower()),
                                          "audiences": AUDIENCES, "duration": ctx.options.duration,
                                          "say": ctx.say, **kw})
            raw["sidecar_bench" + label] = doc
            figures += [Figure(f"{f.name}{label}", f.value, f.unit, aim=f.aim) for f in external.figures_from(
                {k: v for k, v in doc.items() if k in ("rss_mb", "peak_rss_mb", "idle_cpu_pct")}, AIMS)]
            if not label:
                figures += external.figures_from({k: v for k, v in doc.items()
                                                  if k in ("start_to_ready_s", "sigterm_to_exit_s",
                                                           "sigterm_exit_code")}, {})
            heavy = [str(m).strip().splitlines()[-1][:120] for m in doc.get("heavy_imports") or [] if str(m).strip()]
        notes.append(f"one sidecar with {AUDIENCES} audiences, alone, with DPoP, and with DPoP and one injected "
                     f"upstream listening, measured by bench/sidecar_bench.py; modules it loads that it does not "
                     f"need: {', '.join(heavy) or 'none'}")
    upstream_fn = external.load_run("bench.sidecar_upstream_bench")
    if isinstance(upstream_fn, str):
        notes.append(f"credential injection latency not measured: {upstream_fn}")
    else:
        doc = external.call_with(upstream_fn, {"workdir": fresh_dir(ctx.workdir, "sidecar-upstream"),
                                               "say": ctx.say})
        raw["sidecar_upstream_bench"] = doc
        figures += external.figures_from({k: v for k, v in doc.items() if k != "requests"}, {})
        notes.append(f"credential injection: {doc.get('requests')} sequential GETs each on keep-alive connections, "
                     "straight to a small aiohttp upstream and through a sidecar's upstream port (bearer; DPoP "
                     "with a fresh proof per request), taken in turn; added = through the sidecar minus direct, "
                     "at the same percentile; measured by bench/sidecar_upstream_bench.py")
    cap_figures, cap_notes = capacity_figures(ctx)
    return SectionResult("sidecar", TITLE, figures + cap_figures, notes + cap_notes, raw=raw)
