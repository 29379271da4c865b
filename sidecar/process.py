"""Running a real sidecar as a child process, for `jitmesh up`, the tests and the benchmarks,
and turning its JSON log lines into one-line sentences a person can follow."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from jitmesh.contract import (
    ENV_AUDIENCES,
    ENV_BROKER_URL,
    ENV_LISTEN,
    ENV_SA_TOKEN_FILE,
    ENV_TOKEN_DIR,
    ENV_TTL,
    scopes_env_name,
)
from jitmesh.procs import ManagedProcess, free_port, wait_http


def sidecar_argv(python: str = sys.executable) -> list[str]:
    """`jitmesh sidecar`, run with the given interpreter."""
    return [python, "-m", "jitmesh.cli", "sidecar"]


def sidecar_env(*, broker_url: str, audiences: Mapping[str, Sequence[str]], sa_token_file: Path | str,
                token_dir: Path | str, listen: str, ttl: int | None = None,
                extra: Mapping[str, str] | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a sidecar: `base` (default: this process's environment without any
    JITMESH_* variable), the contract variables, then `extra` (e.g. JITMESH_REFRESH_AFTER).
    `audiences` maps each audience to its scopes."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("JITMESH_")}
    env.update({
        ENV_BROKER_URL: broker_url,
        ENV_AUDIENCES: ",".join(audiences),
        ENV_SA_TOKEN_FILE: str(sa_token_file),
        ENV_TOKEN_DIR: str(token_dir),
        ENV_LISTEN: listen,
    })
    for audience, scopes in audiences.items():
        if scopes:
            env[scopes_env_name(audience)] = " ".join(scopes)
    if ttl is not None:
        env[ENV_TTL] = str(ttl)
    env.update(extra or {})
    return env


class SidecarProcess(ManagedProcess):
    """A real `jitmesh sidecar` process on a free loopback port."""

    def __init__(self, *, broker_url: str, audiences: Mapping[str, Sequence[str]], sa_token_file: Path | str,
                 token_dir: Path, log_path: Path, ttl: int | None = None, extra: Mapping[str, str] | None = None,
                 port: int | None = None, python: str = sys.executable) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_dir = Path(token_dir)
        self.audiences = list(audiences)
        env = sidecar_env(broker_url=broker_url, audiences=audiences, sa_token_file=sa_token_file,
                          token_dir=token_dir, listen=f"127.0.0.1:{self.port}", ttl=ttl, extra=extra)
        super().__init__("sidecar", sidecar_argv(python), log_path, env=env)

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        super().start()
        try:
            wait_http(f"{self.url}/healthz", timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"sidecar did not start: {self.output()[-2000:]}") from None
        return self

    def token_file(self, audience: str) -> Path:
        return self.token_dir / audience

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def events(self) -> list[dict[str, object]]:
        """Its log lines, parsed."""
        out = []
        for line in self.output().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out


# What `jitmesh up`'s demo workload (demo/demo-app) asks for: the shipped policy grants the
# first two and has no grant for the third, so the terminal shows issuance, refresh and denial.
# What the shipped policy grants demo/demo-app: its sidecar gets both and turns ready.
DEMO_AUDIENCES: dict[str, list[str]] = {"orders-api": ["read", "write"], "payments-api": ["read"]}


def demo_sidecar(*, broker_url: str, sa_token_file: Path, home: Path, ttl: int = 20, port: int | None = None,
                 audiences: Mapping[str, Sequence[str]] | None = None,
                 extra: Mapping[str, str] | None = None) -> SidecarProcess:
    """The demo workload's sidecar for `jitmesh up`, not yet started: tokens under
    `home/tokens/`, its log in `home/sidecar.log`, a short TTL so refreshes are seen, and
    retries at most 10 s apart; `extra` adds to its environment. Start it with
    `stack.start(proc)` and narrate its log with `stack.every(0.5, LogNarrator(proc.log_path, say).poll)`."""
    return SidecarProcess(broker_url=broker_url, audiences=audiences or DEMO_AUDIENCES, sa_token_file=sa_token_file,
                          token_dir=home / "tokens", log_path=home / "sidecar.log", ttl=ttl, port=port,
                          extra={"JITMESH_BACKOFF_MAX": "10", **(extra or {})})


class LogNarrator:
    """Emits `describe(line)` for each sidecar log line written since the last `poll()`."""

    def __init__(self, log_path: Path, emit: Callable[[str], None], prefix: str = "sidecar: ") -> None:
        self.log_path = log_path
        self.emit = emit
        self.prefix = prefix
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for raw in lines:
            sentence = describe(raw.decode(errors="replace"))
            if sentence:
                self.emit(self.prefix + sentence)


def describe(line: str) -> str | None:
    """One sentence for a sidecar log line worth showing a person (issuance, refresh, denial,
    failure, expiry, revocation, start, stop), else None."""
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict) or not str(e.get("logger", "")).startswith("jitmesh.sidecar"):
        return None
    aud = e.get("audience")
    event = e.get("event")
    if event in ("token.issued", "token.refreshed"):
        verb = "issued" if event == "token.issued" else "refreshed"
        return (f"{aud}: token {verb} (scope {e.get('scope') or '-'!s}, valid {e.get('expires_in')}s, "
                f"next refresh in {e.get('refresh_in')}s, jti {e.get('jti')})")
    if event == "token.denied":
        return f"{aud}: DENIED by policy: {e.get('reasons') or 'no reason given'} (retry in {e.get('retry_in')}s)"
    if event == "token.refresh_failed":
        held = e.get("token_valid_for")
        keep = f"keeping current token ({held}s left)" if held else "no valid token"
        return f"{aud}: request failed, {e.get('reason')}: {e.get('detail')}; {keep}; retry in {e.get('retry_in')}s"
    if event == "token.pending":
        return f"{aud}: waiting for approval {e.get('access_request_id')}; asking again in {e.get('retry_in')}s"
    if event == "token.expired":
        return f"{aud}: token expired without renewal; file removed"
    if event == "token.revoked":
        return f"{aud}: token revoked ({e.get('reason') or 'revocation event'}); file removed, asking again"
    if event == "sidecar.started":
        return f"sidecar started for {', '.join(map(str, e.get('audiences') or []))}"
    if event == "sidecar.stopped":
        return f"sidecar stopped; {e.get('revoked')} token(s) revoked at the broker"
    if event == "sidecar.config_invalid":
        return f"sidecar configuration error: {e.get('error')}"
    return None
