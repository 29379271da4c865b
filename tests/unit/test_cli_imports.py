"""`jitmesh sidecar` runs in every pod: building the command line must not load the broker's,
injector's or dev issuer's heavy libraries (each costs the sidecar megabytes of memory)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("jwt", "cryptography", "aiohttp", "kubernetes", "psycopg", "starlette", "uvicorn", "prometheus_client")


def test_building_the_parser_loads_no_heavy_library() -> None:
    code = ("import json, sys, jitmesh.cli as c; c.build_parser(); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True, timeout=60).stdout))
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_every_subcommand_is_still_registered() -> None:
    from jitmesh.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    expected = {"up", "broker", "token", "revoke", "approvals", "audit", "shadow", "injector", "certs", "sidecar",
                "policy"}
    assert expected <= set(sub.choices)  # type: ignore[attr-defined]
