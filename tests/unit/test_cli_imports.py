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


def test_the_sidecar_command_loads_no_other_package_nor_the_broker_libraries() -> None:
    # `jitmesh sidecar` as a pod runs it, up to its configuration check (an empty environment
    # stops it there, after it has imported everything it serves with)
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))\n"
            "from jitmesh import cli\n"
            "sys.exit(cli.main(['sidecar'], environ={}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "sidecar" in loaded and "uvicorn" in loaded  # it did get as far as the service
    unwanted = {"pdp", "injector", "proxy", "jwt", "cryptography", "aiohttp", "kubernetes", "psycopg", "sqlite3",
                "yaml"}
    assert loaded.isdisjoint(unwanted), sorted(loaded & unwanted)


def test_the_command_is_found_after_the_root_flags() -> None:
    from jitmesh.cli import chosen_command

    assert chosen_command(["--log-level", "debug", "sidecar"]) == "sidecar"
    assert chosen_command(["proxy", "--listen", "x"]) == "proxy"
    assert chosen_command(["--version"]) is None
