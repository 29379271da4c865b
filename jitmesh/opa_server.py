"""A real OPA server process on loopback, for `jitmesh up`, shadow replay, the tests and the benchmarks."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from jitmesh.procs import ManagedProcess, free_port, wait_http

CACHE_BIN = Path.home() / ".cache" / "jitmesh" / "bin"


class OPANotFound(RuntimeError):
    pass


def find_opa(explicit: str | None = None) -> str:
    """The OPA binary: an explicit path (`--opa-bin` / JITMESH_OPA_BIN), else the one
    `scripts/tools.sh opa` built into the cache, else `opa` on PATH."""
    if explicit:
        if not Path(explicit).is_file():
            raise OPANotFound(f"OPA binary {explicit!r} does not exist")
        return explicit
    cached = sorted(CACHE_BIN.glob("opa-v*"))
    if cached:
        return str(cached[-1])
    found = shutil.which("opa")
    if found:
        return found
    raise OPANotFound("no OPA binary: run `scripts/tools.sh opa` (or `make setup`), or pass --opa-bin")


class OPAServer(ManagedProcess):
    def __init__(self, paths: Sequence[str | Path], log_path: Path, opa_bin: str | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [find_opa(opa_bin), "run", "--server", "--addr", f"127.0.0.1:{self.port}",
                "--log-level", "error", "--skip-version-check", *[str(p) for p in paths]]
        super().__init__("opa", argv, log_path)

    def start(self, timeout: float = 30.0) -> OPAServer:
        super().start()
        try:
            wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"OPA did not start: {self.output()[-2000:]}") from None
        return self
