"""The helpers that start a sidecar process (for `jitmesh up`, tests, benchmarks) and turn
its log lines into sentences."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.config import SidecarConfig
from sidecar.process import LogNarrator, demo_sidecar, describe, sidecar_argv, sidecar_env


def test_sidecar_env_is_what_the_config_reads(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.write_text("jwt")
    env = sidecar_env(broker_url="http://127.0.0.1:9000", audiences={"orders-db": ["read", "write"], "api": []},
                      sa_token_file=sa, token_dir=tmp_path / "t", listen="127.0.0.1:9001", ttl=30,
                      extra={"JITMESH_FILE_MODE": "0640"}, base={"PATH": "/bin", "JITMESH_TTL": "999"})
    config = SidecarConfig.from_env(env)
    assert [(a.audience, a.scopes) for a in config.audiences] == [("orders-db", ("read", "write")), ("api", ())]
    assert (config.ttl, config.listen_port, config.file_mode) == (30, 9001, 0o640)
    assert env["PATH"] == "/bin"


def test_stray_jitmesh_variables_of_the_parent_do_not_leak_in(tmp_path: Path) -> None:
    env = sidecar_env(broker_url="http://b", audiences={"a": []}, sa_token_file="/sa", token_dir="/t",
                      listen="127.0.0.1:1", base={"JITMESH_BACKOFF_MAX": "0.001", "HOME": "/root"})
    assert "JITMESH_BACKOFF_MAX" not in env and "JITMESH_TTL" not in env


def test_argv_runs_the_jitmesh_sidecar_command() -> None:
    assert sidecar_argv("/usr/bin/python3") == ["/usr/bin/python3", "-m", "jitmesh.cli", "sidecar"]


def line(**fields: object) -> str:
    return json.dumps({"logger": "jitmesh.sidecar", **fields})


def test_describe_tells_issuance_refresh_and_denial() -> None:
    issued = describe(line(event="token.issued", audience="orders-db", scope="read", expires_in=29.0,
                           refresh_in=17.2, jti="j-1"))
    assert issued is not None and issued.startswith("orders-db: token issued") and "valid 29.0s" in issued
    refreshed = describe(line(event="token.refreshed", audience="orders-db", scope="read", expires_in=29.0,
                              refresh_in=16.0, jti="j-2"))
    assert refreshed is not None and "token refreshed" in refreshed
    denied = describe(line(event="token.denied", audience="orders-db", reasons="change freeze", retry_in=2.0))
    assert denied == "orders-db: DENIED by policy: change freeze (retry in 2.0s)"


def test_describe_skips_other_lines() -> None:
    assert describe("not json") is None
    assert describe(json.dumps({"logger": "uvicorn.error", "event": "Started server process"})) is None
    assert describe(line(event="token.revoked_at_broker", audience="a")) is None


def test_narrator_emits_each_described_line_once_and_waits_for_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    said: list[str] = []
    narrator = LogNarrator(log, said.append)
    narrator.poll()  # no file yet
    denied = line(event="token.denied", audience="orders-db", reasons="no grant", retry_in=1.0)
    log.write_text(line(event="noise") + "\n" + denied[:20])
    narrator.poll()
    assert said == []
    with open(log, "a") as f:
        f.write(denied[20:] + "\n")
    narrator.poll()
    narrator.poll()
    assert said == ["sidecar: orders-db: DENIED by policy: no grant (retry in 1.0s)"]


def test_demo_sidecar_asks_for_the_granted_audiences_only(tmp_path: Path) -> None:
    proc = demo_sidecar(broker_url="http://127.0.0.1:1", sa_token_file=tmp_path / "sa", home=tmp_path, ttl=15)
    assert proc.token_dir == tmp_path / "tokens" and proc.audiences == ["orders-api", "payments-api"]
    assert proc.env is not None and proc.env["JITMESH_TTL"] == "15" and not proc.running()
