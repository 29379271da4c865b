"""Section 5: latency of the webhook's /mutate on a realistic pod, measured by
bench/injector_bench.py's run()."""

from __future__ import annotations

from bench import external
from bench.context import Context
from bench.report import Aim, SectionResult, unavailable
from bench.stack import fresh_dir

TITLE = "5. Webhook: POST /mutate latency on a realistic pod"
AIMS = {"p99_ms": Aim("<", 5), "latency_p99_ms": Aim("<", 5), "mutate_p99_ms": Aim("<", 5)}


def run(ctx: Context) -> SectionResult:
    fn = external.load_run("bench.injector_bench")
    if isinstance(fn, str):
        return unavailable("webhook", TITLE, fn)
    doc = external.call_with(fn, {"workdir": fresh_dir(ctx.workdir, "webhook"), "duration": ctx.options.duration,
                                  "say": ctx.say})
    return SectionResult("webhook", TITLE, external.figures_from(doc, AIMS), raw={"injector_bench": doc})
