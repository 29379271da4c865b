"""Running a real broker as a child process, for `jitmesh up`, the tests and the benchmarks."""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from jitmesh.procs import ManagedProcess, free_port, wait_http


def broker_argv(python: str = sys.executable) -> list[str]:
    """`jitmesh broker`, run with the given interpreter."""
    return [python, "-m", "jitmesh.cli", "broker"]


def flag_args(flags: Mapping[str, object]) -> list[str]:
    """`{"max_ttl": 60, "pod_lookup": True}` -> `["--max-ttl", "60", "--pod-lookup"]`."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        option = "--" + name.replace("_", "-")
        argv += [option] if value is True else [option, str(value)]
    return argv


class BrokerProcess(ManagedProcess):
    """A real `jitmesh broker` on a loopback port, started when /readyz answers 200.
    `flags` are broker flags by their Python name (`opa_url=...`, `jwks_file=...`)."""

    def __init__(self, *, flags: Mapping[str, object], log_path: Path, port: int | None = None,
                 python: str = sys.executable, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, ca_file: Path | None = None) -> None:
        self.port = port or free_port()
        # with tls_cert_file in `flags` it serves HTTPS; `ca_file` is then what verifies it
        self.url = f"{'https' if flags.get('tls_cert_file') else 'http'}://127.0.0.1:{self.port}"
        self.ca_file = ca_file
        self.flags = {"listen": f"127.0.0.1:{self.port}", **flags}
        base = os.environ if env is None else env
        # the broker is configured by the flags given here, not by a stray JITMESH_* variable
        clean = {k: v for k, v in base.items() if not k.startswith("JITMESH_")}
        super().__init__("broker", [*broker_argv(python), *flag_args(self.flags), *extra_args], log_path, env=clean)

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        super().start()
        try:
            wait_http(f"{self.url}/readyz", timeout=timeout, proc=self.proc,
                      verify=ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True)
        except Exception:
            self.stop()
            raise RuntimeError(f"broker did not start: {self.output()[-3000:]}") from None
        return self
