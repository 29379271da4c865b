"""Running a real `jitmesh proxy` as a child process, for `jitmesh up`, the tests and the
benchmarks."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from jitmesh.procs import ManagedProcess, free_port, wait_http


class ProxyProcess(ManagedProcess):
    """A real `jitmesh proxy` on free loopback ports (the proxy's and its metrics port)."""

    def __init__(self, *, broker_url: str, audiences: Sequence[str], sa_token_file: Path | str, log_path: Path,
                 upstream: str | None = None, opa_url: str | None = None, extra: Sequence[str] = (),
                 python: str = sys.executable, env: Mapping[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.metrics_port = free_port()
        argv = [python, "-m", "jitmesh.cli", "proxy", "--listen", f"127.0.0.1:{self.port}",
                "--broker-url", broker_url, "--sa-token-file", str(sa_token_file),
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        for audience in audiences:
            argv += ["--audience", audience]
        if upstream:
            argv += ["--upstream", upstream]
        if opa_url:
            argv += ["--opa-url", opa_url]
        argv += list(extra)
        base = os.environ if env is None else env
        env_clean = {k: v for k, v in base.items() if not k.startswith("JITMESH_")}
        super().__init__("proxy", argv, log_path, env=env_clean)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, timeout: float = 30.0, ready: bool = True) -> ProxyProcess:
        super().start()
        wait_http(self.metrics_url + ("/readyz" if ready else "/healthz"), timeout=timeout, proc=self.proc)
        return self
