"""The injector's configuration: built once from the parsed flags, passed down."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from jitmesh.contract import DEFAULT_SUBJECT_AUDIENCE
from jitmesh.hostport import split_host_port
from jitmesh.tls import pem_ca_problem

DEFAULT_SIDECAR_IMAGE = "ghcr.io/jitmesh/jitmesh:0.1.0"
DEFAULT_AGENT_PORT = 8099  # the sidecar's own default for JITMESH_LISTEN
DEFAULT_LISTEN = "0.0.0.0:8443"
PROXY_METRICS_PORT = 15091  # /healthz, /readyz and /metrics of the proxy, apart from the traffic it guards
UPSTREAM_BASE_PORT = 15100  # the sidecar's loopback ports for jitmesh.io/upstream.<audience> count up from here


class InjectorConfigError(ValueError):
    """A bad flag; the message names it and what would be right."""


@dataclass(frozen=True)
class SidecarResources:
    cpu_request: str = "10m"
    memory_request: str = "48Mi"
    cpu_limit: str = "200m"
    memory_limit: str = "128Mi"


@dataclass(frozen=True)
class InjectorConfig:
    broker_url: str
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    subject_audience: str = DEFAULT_SUBJECT_AUDIENCE
    native_sidecars: bool = True
    default_audiences: tuple[str, ...] = ()
    agent_port: int = DEFAULT_AGENT_PORT
    resources: SidecarResources = field(default_factory=SidecarResources)
    broker_ca_pem: str | None = None  # given to sidecars as JITMESH_BROKER_CA, for an https broker

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"

    @property
    def agent_listen(self) -> str:
        return f"127.0.0.1:{self.agent_port}"


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    tls_cert_file: Path
    tls_key_file: Path
    kubeconfig: Path | None
    namespace_cache_seconds: float
    injection: InjectorConfig

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerConfig:
        host, port = parse_listen(args.listen)
        cert, key = Path(args.tls_cert_file or ""), Path(args.tls_key_file or "")
        for flag, path in (("--tls-cert-file", cert), ("--tls-key-file", key)):
            if not str(path) or str(path) == "." or not path.is_file():
                raise InjectorConfigError(f"{flag}={str(path) or ''!r} is not a readable file; the API server "
                                          "only calls webhooks over HTTPS (see `jitmesh certs`)")
        if args.namespace_cache_seconds < 0:
            raise InjectorConfigError("--namespace-cache-seconds must be zero or more")
        return cls(
            host=host,
            port=port,
            tls_cert_file=cert,
            tls_key_file=key,
            kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
            namespace_cache_seconds=args.namespace_cache_seconds,
            injection=InjectorConfig(
                broker_url=parse_broker_url(args.broker_url),
                sidecar_image=_nonempty("--sidecar-image", args.sidecar_image),
                subject_audience=_nonempty("--subject-audience", args.subject_audience),
                native_sidecars=args.native_sidecars,
                default_audiences=parse_default_audiences(args.default_audiences),
                agent_port=_port("--agent-port", args.agent_port),
                broker_ca_pem=read_broker_ca(getattr(args, "broker_ca_file", None)),
            ),
        )


def parse_listen(raw: str) -> tuple[str, int]:
    parsed = split_host_port(raw)
    if parsed is None:
        raise InjectorConfigError(f"--listen={raw!r} is not HOST:PORT, e.g. 0.0.0.0:8443")
    return parsed


def parse_broker_url(raw: str | None) -> str:
    raw = (raw or "").strip()
    if not raw:
        raise InjectorConfigError("--broker-url is required: the broker URL sidecars are told, e.g. "
                                  "http://jitmesh-broker.jitmesh.svc:8080")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise InjectorConfigError(f"--broker-url={raw!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InjectorConfigError(f"--broker-url={raw!r} is not an http(s) URL with a host and no query")
    return raw.rstrip("/")


def read_broker_ca(path: str | None) -> str | None:
    """The PEM of --broker-ca-file, checked to hold at least one certificate."""
    if not path:
        return None
    try:
        pem = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InjectorConfigError(f"--broker-ca-file={path!r} cannot be read: {exc}") from None
    problem = pem_ca_problem(pem)
    if problem:
        raise InjectorConfigError(f"--broker-ca-file={path!r} {problem}")
    return pem


def parse_default_audiences(raw: str | list[str] | None) -> tuple[str, ...]:
    from injector.annotations import AnnotationError, parse_audience_list

    if not raw:
        return ()
    text = raw if isinstance(raw, str) else ",".join(raw)
    try:
        return parse_audience_list(text, "--default-audiences")
    except AnnotationError as exc:
        raise InjectorConfigError(str(exc)) from None


def _nonempty(flag: str, raw: str | None) -> str:
    if not raw or not raw.strip():
        raise InjectorConfigError(f"{flag} must not be empty")
    return raw.strip()


def _port(flag: str, value: int) -> int:
    if not 0 < value < 65536:
        raise InjectorConfigError(f"{flag}={value} is not a TCP port (1-65535)")
    return value
