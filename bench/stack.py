"""The real processes a benchmark measures, on loopback: OPA on the shipped policies/,
broker replicas (`jitmesh broker`) on SQLite or PostgreSQL, and a dev ServiceAccount
token issuer standing in for the cluster."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, serviceaccount_subject
from jitmesh.devissuer import DEV_ISSUER_URL, DevIssuer, PodRef
from jitmesh.opa_server import OPAServer
from pdp.process import BrokerProcess

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "policies"
ADMIN_TOKEN = "bench-admin-" + uuid.uuid4().hex
SUBJECT_TOKEN_TTL = 3600  # outlives any benchmark run


@dataclass(frozen=True)
class Workload:
    """Who asks for what: a request the shipped policy allows."""

    namespace: str = "demo"
    service_account: str = "demo-app"
    audience: str = "orders-api"
    scopes: tuple[str, ...] = ("read", "write")

    @property
    def subject(self) -> str:
        return serviceaccount_subject(self.namespace, self.service_account)


def jitmesh_argv() -> list[str]:
    script = Path(sys.executable).parent / "jitmesh"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jitmesh.cli"]


def child_env() -> dict[str, str]:
    """The bench's environment without JITMESH_* settings, so only the flags we pass apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITMESH_")}
    if "JITMESH_OPA_BIN" in os.environ:
        env["JITMESH_OPA_BIN"] = os.environ["JITMESH_OPA_BIN"]
    return env


@functools.cache
def command_help(command: str) -> str | None:
    """`jitmesh <command> --help`, or None when the command does not exist yet."""
    try:
        done = subprocess.run([*jitmesh_argv(), *command.split(), "--help"], capture_output=True, text=True,
                              timeout=60, env=child_env(), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def missing_flags(command: str, flags: Sequence[str]) -> str | None:
    """Why `jitmesh <command>` cannot run with `flags`, or None when it can."""
    text = command_help(command)
    if text is None:
        return f"`jitmesh {command}` does not exist yet"
    absent = [f for f in flags if f not in text]
    return f"`jitmesh {command}` has no {', '.join(absent)}" if absent else None


class Cluster:
    """The dev issuer: the JWKS file the broker trusts, and subject tokens from it."""

    def __init__(self, workdir: Path) -> None:
        self.issuer = DevIssuer(DEV_ISSUER_URL)
        self.jwks_file = self.issuer.write_jwks(workdir / "cluster-jwks.json")

    def subject_token(self, workload: Workload, pod: PodRef) -> str:
        """A projected ServiceAccount token bound to `pod`, as the kubelet would mount it."""
        return self.issuer.mint(workload.namespace, workload.service_account, pod=pod, ttl=SUBJECT_TOKEN_TTL)


def bench_pod(workload: Workload, index: int = 0) -> PodRef:
    return PodRef(name=f"{workload.service_account}-7d9c5-{index:04d}", uid=str(uuid.uuid4()))


def token_request_body(subject_token: str, workload: Workload) -> str:
    return urlencode({"grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token,
                      "subject_token_type": TOKEN_TYPE_JWT, "audience": workload.audience,
                      "scope": " ".join(workload.scopes)})


def policy_input(workload: Workload, pod: PodRef) -> dict[str, Any]:
    """The input the broker sends OPA for `workload`'s request (docs/contract.md §3)."""
    return {
        "subject": {"sub": workload.subject, "issuer": DEV_ISSUER_URL, "namespace": workload.namespace,
                    "service_account": workload.service_account,
                    "pod": {"name": pod.name, "uid": pod.uid, "labels": {}, "images": []}},
        "request": {"audience": workload.audience, "scopes": list(workload.scopes), "ttl_seconds": None,
                    "dpop": None},
        "context": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client_ip": "127.0.0.1"},
        "approval": None,
    }


def start_opa(workdir: Path) -> OPAServer:
    if not POLICIES.is_dir() or not any(POLICIES.rglob("*.rego")):
        raise RuntimeError(f"no shipped policy under {POLICIES}")
    return OPAServer([POLICIES], workdir / "opa.log", opa_bin=os.environ.get("JITMESH_OPA_BIN")).start()


def start_broker(workdir: Path, name: str, *, opa_url: str, cluster: Cluster, store_url: str,
                 extra: Sequence[str] = (), timeout: float = 60.0) -> BrokerProcess:
    """One `jitmesh broker` replica on a free loopback port, ready when this returns."""
    admin_file = workdir / "admin-tokens"
    if not admin_file.exists():
        admin_file.write_text(f"# bench admin\n{ADMIN_TOKEN}\n")
    proc = BrokerProcess(flags={"opa_url": opa_url, "jwks_file": cluster.jwks_file,
                                "subject_issuer": cluster.issuer.issuer, "store": store_url,
                                "admin_token_file": admin_file},
                         log_path=workdir / f"{name}.log", extra_args=extra)
    proc.name = name
    return proc.start(timeout=timeout)


def sqlite_url(workdir: Path, name: str = "broker") -> str:
    return f"sqlite:///{workdir / (name + '.db')}"


def fresh_dir(root: Path, name: str) -> Path:
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
