"""`jitmesh up`: the whole system on one machine with embedded defaults.

Under `./.jitmesh/` it keeps a local "cluster" issuer (key and JWKS, shaped like
kube-apiserver's), an admin token file and a ServiceAccount token for the demo workload
(`demo/demo-app`, refreshed while running); it starts OPA on `policies/` and the broker
on SQLite and a demo workload's real sidecar (tokens under `./.jitmesh/tokens/`) as child
processes, prints each step, each issuance, refresh and denial as it happens, and a
ready-to-paste `jitmesh token` command, and stops everything on Ctrl-C or SIGTERM.

A second demo workload, `demo/orders`, serves the audience orders-api behind a real
`jitmesh proxy` (the broker builds the access policy from `policies/` as Wasm). The first one
calls it every few seconds with no credential of its own, through its sidecar's loopback
forwarder: the sidecar holds a DPoP key in memory, its tokens are bound to it, and it adds the
token and a fresh proof to each call. The console tells each call's fate: allowed, denied by
the access policy; once, a thief's replay of the token read from its file, refused for want
of the key; and once, refused after the token was revoked.

The run loop is a `Stack`: child processes it watches and periodic jobs it runs. A demo
sidecar joins as one more `stack.start(...)` and, if it needs one, a `stack.every(...)`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from jitmesh.contract import (
    ENV_DPOP,
    ENV_UPSTREAM_LISTEN_PREFIX,
    ENV_UPSTREAM_URL_PREFIX,
    audience_env_suffix,
    upstream_env_name,
)
from jitmesh.opa_server import OPANotFound, OPAServer, find_opa
from jitmesh.procs import ManagedProcess

if TYPE_CHECKING:  # jwt and cryptography load only when `up` runs, not for every subcommand
    from jitmesh.devissuer import DevIssuer
    from sidecar.process import SidecarProcess

DEMO_NAMESPACE = "demo"
DEMO_SERVICE_ACCOUNT = "demo-app"
DEMO_POD_NAME = "demo-app-0"
DEMO_POD_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "jitmesh-up/demo/demo-app-0"))
DEMO_AUDIENCE = "orders-api"
DEMO_SCOPE = "read"
# The example candidate shipped beside the policy (policies/candidate/), for `jitmesh up --shadow`.
SHADOW_CANDIDATE_PATH = "jitmesh/candidate/authz/decision"
# Asked once at start, to show a denial: the shipped policy gives demo/demo-app no grant for it.
DEMO_DENIED_AUDIENCE = "orders-db"
DEMO_SERVER_ACCOUNT = "orders"  # the shipped policy lets demo/orders serve orders-api
DEMO_SERVER_POD = "orders-0"
DEMO_CALL_EVERY = 3.0
SUBJECT_TOKEN_TTL = 600
SUBJECT_TOKEN_REFRESH = 300


def say(message: str) -> None:
    print(f"[up] {message}", flush=True)


def write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class DevCluster:
    """The local stand-in for a cluster: who signs ServiceAccount tokens, and the demo's token."""

    home: Path
    issuer: DevIssuer = field(init=False)

    def __post_init__(self) -> None:
        from jitmesh.devissuer import DevIssuer

        self.issuer = DevIssuer.load_or_create(self.home / "issuer.key")
        self.issuer.write_jwks(self.jwks_file)

    @property
    def jwks_file(self) -> Path:
        return self.home / "jwks.json"

    @property
    def subject_token_file(self) -> Path:
        return self.home / f"{DEMO_SERVICE_ACCOUNT}.jwt"

    @property
    def server_token_file(self) -> Path:
        return self.home / f"{DEMO_SERVER_ACCOUNT}.jwt"

    def refresh_subject_token(self) -> None:
        from jitmesh.devissuer import PodRef

        token = self.issuer.mint(DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT, pod=PodRef(DEMO_POD_NAME, DEMO_POD_UID),
                                 ttl=SUBJECT_TOKEN_TTL)
        write_private(self.subject_token_file, token + "\n")
        server_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"jitmesh-up/{DEMO_NAMESPACE}/{DEMO_SERVER_POD}"))
        token = self.issuer.mint(DEMO_NAMESPACE, DEMO_SERVER_ACCOUNT, pod=PodRef(DEMO_SERVER_POD, server_uid),
                                 ttl=SUBJECT_TOKEN_TTL)
        write_private(self.server_token_file, token + "\n")


def ensure_admin_token(path: Path) -> None:
    if not path.exists():
        write_private(path, f"# admin bearer tokens of the `jitmesh up` broker, one a line\n"
                            f"{secrets.token_urlsafe(32)}\n")


class Stack:
    """Child processes watched until one dies or a stop is asked, and periodic jobs."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self.jobs: list[tuple[float, Callable[[], None], list[float]]] = []
        self.stopping = threading.Event()

    def start(self, proc: ManagedProcess, start: Callable[[], Any] | None = None) -> None:
        """Start `proc` (with `start` when it has a readiness wait of its own) and watch it."""
        self.processes.append(proc)
        (start or proc.start)()

    def every(self, seconds: float, job: Callable[[], None]) -> None:
        self.jobs.append((seconds, job, [time.monotonic() + seconds]))

    def run(self, tick: float = 0.5) -> int:
        """Until a stop is asked (0) or a child dies (1)."""
        while not self.stopping.wait(tick):
            now = time.monotonic()
            for seconds, job, due in self.jobs:
                if now >= due[0]:
                    due[0] = now + seconds
                    job()
            for proc in self.processes:
                if not proc.running():
                    say(f"{proc.name} exited unexpectedly (see {proc.log_path}); stopping")
                    return 1
        return 0

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.running():
                say(f"stopping {proc.name}")
            proc.stop(timeout=10)


def port_free(port: int) -> bool:
    """Whether a server could listen on the port now: sockets of a run just stopped that
    linger in TIME-WAIT do not count, as they do not for the servers (SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def jitmesh_command() -> str:
    """How to run `jitmesh` from this shell: plain when it is on PATH, else the path of this
    installation's script (e.g. `.venv/bin/jitmesh`), relative when below the working directory."""
    script = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "jitmesh" else \
        Path(sys.executable).parent / "jitmesh"
    found = shutil.which("jitmesh")
    if found is not None and Path(found).resolve() == script.resolve():
        return "jitmesh"
    if not script.exists():
        return f"{sys.executable} -m jitmesh.cli"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def show_denial(broker_url: str, subject_token_file: Path) -> None:
    """Ask once, as the demo workload, for an audience the policy does not grant it, and say why."""
    import httpx

    from jitmesh.contract import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT
    try:
        r = httpx.post(f"{broker_url}/token", timeout=10, data={
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token": subject_token_file.read_text().strip(),
            "subject_token_type": TOKEN_TYPE_JWT, "audience": DEMO_DENIED_AUDIENCE, "scope": "read"})
        body = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        say(f"{DEMO_DENIED_AUDIENCE}: the denial demo could not ask the broker: {exc}")
        return
    say(f"{DEMO_DENIED_AUDIENCE}: asked once, on purpose, for an audience the shipped policy does not grant "
        f"{DEMO_NAMESPACE}/{DEMO_SERVICE_ACCOUNT}: {r.status_code} {body.get('error')}: "
        f"{body.get('error_description')} (decision {body.get('decision_id')})")


def demo_client_sidecar(*, broker_url: str, sa_token_file: Path, home: Path, ttl: int, port: int,
                        orders_url: str, forward_port: int) -> SidecarProcess:
    """demo/demo-app's sidecar, not yet started: tokens under `home/tokens/`, its log in
    `home/sidecar.log`, retries at most 10 s apart; DPoP on, and the orders audience forwarded
    from `127.0.0.1:forward_port` to `orders_url` with the token and a proof, so the app holds
    no credential."""
    from sidecar.process import demo_sidecar

    suffix = audience_env_suffix(DEMO_AUDIENCE)
    return demo_sidecar(broker_url=broker_url, sa_token_file=sa_token_file, home=home, ttl=ttl, port=port,
                        extra={ENV_DPOP: "true", ENV_UPSTREAM_URL_PREFIX + suffix: orders_url,
                               ENV_UPSTREAM_LISTEN_PREFIX + suffix: f"127.0.0.1:{forward_port}"})


def run_up(args: argparse.Namespace) -> int:
    from pdp.process import BrokerProcess
    from proxy.demo import ALLOWED_CALL, DemoCaller, OrdersService
    from proxy.process import ProxyProcess
    from sidecar.process import DEMO_AUDIENCES, LogNarrator

    home = Path(args.home).resolve()
    policies = Path(args.policies).resolve()
    if not policies.is_dir():
        print(f"jitmesh up: --policies {args.policies!r} is not a directory (run from the repository root, "
              "or pass --policies)", file=sys.stderr)
        return 2
    for flag, port in (("--broker-port", args.broker_port), ("--opa-port", args.opa_port),
                       ("--sidecar-port", args.sidecar_port), ("--proxy-port", args.proxy_port),
                       ("--upstream-port", args.upstream_port)):
        if not port_free(port):
            print(f"jitmesh up: 127.0.0.1:{port} is in use; pass another {flag}", file=sys.stderr)
            return 2
    home.mkdir(parents=True, exist_ok=True)

    cluster = DevCluster(home)
    say(f"local cluster issuer {cluster.issuer.issuer}: key {home / 'issuer.key'}, JWKS {cluster.jwks_file}")
    admin_file = home / "admin-token"
    ensure_admin_token(admin_file)
    say(f"admin token file: {admin_file}")
    cluster.refresh_subject_token()
    say(f"ServiceAccount token of {DEMO_NAMESPACE}/{DEMO_SERVICE_ACCOUNT} (pod {DEMO_POD_NAME}): "
        f"{cluster.subject_token_file}, renewed every {SUBJECT_TOKEN_REFRESH}s")

    stack = Stack()
    orders: OrdersService | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stack.stopping.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            opa_bin = find_opa(args.opa_bin)
            opa = OPAServer([policies], home / "opa.log", opa_bin=opa_bin, port=args.opa_port)
        except OPANotFound as exc:
            print(f"jitmesh up: {exc}", file=sys.stderr)
            return 2
        say(f"starting OPA on {policies} at {opa.url} (log {opa.log_path})")
        stack.start(opa)
        store = f"sqlite:///{home / 'broker.db'}"
        broker = BrokerProcess(port=args.broker_port, log_path=home / "broker.log", flags={
            "opa_url": opa.url, "jwks_file": cluster.jwks_file, "subject_issuer": cluster.issuer.issuer,
            "store": store, "admin_token_file": admin_file,
            "shadow_policy_path": SHADOW_CANDIDATE_PATH if args.shadow else None,
            "access_policy_dir": policies, "opa_bin": opa_bin,
        })
        say(f"starting the broker at {broker.url} (store {store}, log {broker.log_path})")
        if args.shadow:
            say(f"shadow mode on: every request is also asked of the example candidate ({SHADOW_CANDIDATE_PATH}, "
                f"from {policies / 'candidate'}); it never changes what is issued")
        stack.start(broker)
        stack.every(SUBJECT_TOKEN_REFRESH, cluster.refresh_subject_token)
        proxy_url = f"http://127.0.0.1:{args.proxy_port}"
        forwarder_url = f"http://127.0.0.1:{args.upstream_port}"
        sidecar = demo_client_sidecar(broker_url=broker.url, sa_token_file=cluster.subject_token_file, home=home,
                                      ttl=args.demo_ttl, port=args.sidecar_port, orders_url=proxy_url,
                                      forward_port=args.upstream_port)
        say(f"starting the demo workload's sidecar at {sidecar.url}: tokens for "
            f"{', '.join(DEMO_AUDIENCES)} in {sidecar.token_dir}, TTL {args.demo_ttl}s (log {sidecar.log_path})")
        say(f"the sidecar has DPoP on: a key in its memory only, every token bound to it (cnf.jkt); the app "
            f"reaches {DEMO_AUDIENCE} at {upstream_env_name(DEMO_AUDIENCE)}={forwarder_url}, which the sidecar "
            f"forwards to {proxy_url} with the token and a fresh proof")
        stack.start(sidecar)
        stack.every(0.5, LogNarrator(sidecar.log_path, say).poll)
        show_denial(broker.url, cluster.subject_token_file)
        orders = OrdersService().start()
        proxy = ProxyProcess(broker_url=broker.url, audiences=[DEMO_AUDIENCE], sa_token_file=cluster.server_token_file,
                             log_path=home / "proxy.log", upstream=orders.url, port=args.proxy_port)
        say(f"starting the second demo workload, {DEMO_NAMESPACE}/{DEMO_SERVER_ACCOUNT} (an orders service at "
            f"{orders.url}), behind a jitmesh proxy at {proxy.url} serving {DEMO_AUDIENCE}: the access policy "
            f"from {policies / 'access.rego'}, built as Wasm by the broker (log {proxy.log_path})")
        stack.start(proxy, lambda: proxy.start(timeout=60))
        caller = DemoCaller(upstream_url=forwarder_url, proxy_url=proxy.url,
                            token_file=sidecar.token_dir / DEMO_AUDIENCE, broker_url=broker.url,
                            admin_token_file=admin_file, caller=f"{DEMO_NAMESPACE}/{DEMO_SERVICE_ACCOUNT}", say=say)
        say(f"{DEMO_NAMESPACE}/{DEMO_SERVICE_ACCOUNT} calls the orders service every {DEMO_CALL_EVERY:.0f}s at "
            f"{forwarder_url} with no credential; its sidecar presents the DPoP-bound {DEMO_AUDIENCE} token "
            "to the proxy")
        stack.every(DEMO_CALL_EVERY, caller.call)
        jm = jitmesh_command()
        say("ready. In another shell, point the CLI at this broker (admin commands read the token file):")
        print(f"\n  export JITMESH_BROKER_URL={broker.url}"
              f"\n  export JITMESH_ADMIN_TOKEN_FILE={admin_file}\n"
              f"\n  then ask for a token as the demo workload:\n"
              f"\n  {jm} token --audience {DEMO_AUDIENCE} --scope {DEMO_SCOPE} "
              f"--subject-token-file {cluster.subject_token_file}\n"
              f"\n  call the orders service as {DEMO_NAMESPACE}/{DEMO_SERVICE_ACCOUNT} does, with no credential "
              f"(its sidecar adds one):\n"
              f"\n  curl {forwarder_url}{ALLOWED_CALL[1]}\n"
              f"\n  and watch the audit trail:\n"
              f"\n  {jm} audit --follow\n"
              + (f"\n  and compare the candidate policy with the enforced one:\n"
                 f"\n  {jm} shadow report --since 10m\n" if args.shadow else ""), flush=True)
        say("Ctrl-C stops everything")
        code = stack.run()
    except KeyboardInterrupt:
        code = 0
    except RuntimeError as exc:
        say(str(exc))
        code = 1
    finally:
        stack.stop()
        if orders is not None:
            orders.stop()
        signal.signal(signal.SIGTERM, previous)
    say("stopped")
    return code


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="run OPA, the broker, a local cluster issuer and a demo workload "
                                  "with a real sidecar on this machine")
    p.add_argument("--home", default=".jitmesh", help="state directory (default %(default)s)")
    p.add_argument("--policies", default="policies", help="policy directory for OPA (default %(default)s)")
    p.add_argument("--broker-port", type=int, default=8080, help="broker port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--opa-port", type=int, default=8181, help="OPA port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--sidecar-port", type=int, default=8099,
                   help="the demo sidecar's local API port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--proxy-port", type=int, default=8098,
                   help="the demo orders service's access proxy port on 127.0.0.1 (default %(default)s)")
    p.add_argument("--upstream-port", type=int, default=8097,
                   help="the loopback port the demo sidecar forwards the orders service from, with its token "
                        "(default %(default)s)")
    p.add_argument("--demo-ttl", type=int, default=20,
                   help="TTL the demo sidecar asks for, in seconds, so refreshes show quickly (default %(default)s)")
    p.add_argument("--opa-bin", default=None, help="path to the opa binary (default: the cached build)")
    p.add_argument("--shadow", action="store_true",
                   help="shadow mode: also ask the example candidate policy (policies/candidate/) about every "
                        "request, so `jitmesh shadow report` shows a comparison")
    p.set_defaults(func=run_up)
