"""Section 7: the images' sizes, the single-node cluster's start-up and the chart's install,
beside the time from creating the first injected Deployment to its pod Running (tests/cluster
run for one test, which writes its timings to JITMESH_CLUSTER_TIMINGS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.context import Context
from bench.report import Figure, SectionResult, unavailable

TITLE = "8. Cluster: image sizes, single-node start-up, first injected pod Running"
REPO = Path(__file__).resolve().parents[1]
FIRST_TEST = ("tests/cluster/test_injection.py::"
              "test_deployment_in_labelled_namespace_starts_app_only_with_a_token_that_verifies_against_the_broker")


def image_sizes() -> dict[str, float]:
    """Reference -> archive size in MB, from `image/build.sh list` (builds what is missing)."""
    out = subprocess.run([str(REPO / "image" / "build.sh"), "list"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})
    if out.returncode != 0:
        raise RuntimeError(f"image/build.sh list: {out.stderr.strip()[-500:]}")
    sizes = {}
    for line in out.stdout.splitlines():
        ref, _, archive = line.partition("\t")
        sizes[ref] = Path(archive).stat().st_size / 1e6
    return sizes


def run(ctx: Context) -> SectionResult:
    if os.geteuid() != 0:
        return unavailable("cluster", TITLE, "needs root (containerd, the kubelet, network namespaces)")
    try:
        sizes = image_sizes()
    except RuntimeError as exc:
        return unavailable("cluster", TITLE, str(exc))
    timings_file = ctx.workdir / "cluster-timings.json"
    ctx.say("   starting the single-node cluster and the first cluster test (a minute or two)")
    out = subprocess.run([sys.executable, "-m", "pytest", FIRST_TEST, "-q", "-p", "no:cacheprovider"],
                         cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "JITMESH_CLUSTER_TIMINGS": str(timings_file)})
    if out.returncode != 0 or not timings_file.exists():
        return unavailable("cluster", TITLE, f"the cluster test failed:\n{out.stdout[-1500:]}")
    timings = json.loads(timings_file.read_text())
    figures = [Figure(f"image {ref} (archive)", mb, "MB") for ref, mb in sizes.items()]
    figures += [Figure(name, seconds, "s") for name, seconds in timings.items() if not name.startswith("test_")]
    return SectionResult("cluster", TITLE, figures, raw={"image_mb": sizes, "timings_s": timings})
