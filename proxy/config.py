"""The proxy's configuration, built once from its flags (docs/contract.md §7)."""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jitmesh.hostport import split_host_port
from jitmesh.tls import pem_ca_problem

DEFAULT_POLICY_PATH = "jitmesh/access/decision"
STREAM_MAX_DOWN_SECONDS = 30.0
KEYS_MAX_STALENESS_SECONDS = 300.0


class ConfigError(ValueError):
    pass


def _url(flag: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{flag} {raw!r}: expected an http:// or https:// URL")
    return raw.rstrip("/")


def _listen(flag: str, raw: str) -> tuple[str, int]:
    hp = split_host_port(raw)
    if hp is None:
        raise ConfigError(f"{flag} {raw!r}: expected HOST:PORT with a port from 1 to 65535")
    return hp


@dataclass(frozen=True)
class ProxyConfig:
    listen: tuple[str, int]
    upstream: str | None
    audiences: tuple[str, ...]
    broker_url: str
    broker_ca_file: Path | None
    sa_token_file: Path
    policy_path: str
    opa_url: str | None
    metrics_listen: tuple[str, int] | None
    stream_max_down: float = STREAM_MAX_DOWN_SECONDS
    keys_max_staleness: float = KEYS_MAX_STALENESS_SECONDS
    header_timeout: float = 10.0
    leeway: float = 30.0
    policy_refresh: float = 30.0
    body_idle_timeout: float = 30.0
    upstream_timeout: float = 30.0
    max_header_bytes: int = 16384
    opa_timeout: float = 1.0
    broker_ca_pem: str | None = None  # inline PEM, as the injector hands it (JITMESH_BROKER_CA)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProxyConfig:
        audiences = tuple(dict.fromkeys(a.strip() for a in (args.audience or []) if a.strip()))
        if not audiences:
            raise ConfigError("--audience: name at least one audience this service accepts")
        token_file = Path(args.sa_token_file)
        if not token_file.is_file():
            raise ConfigError(f"--sa-token-file {token_file}: no such file (the proxy's ServiceAccount token)")
        ca = Path(args.broker_ca_file) if args.broker_ca_file else None
        if ca is not None:
            try:
                ssl.create_default_context(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--broker-ca-file {ca}: not a readable PEM CA bundle ({exc})") from None
        ca_pem = getattr(args, "broker_ca", None) or None
        if ca_pem is not None and (problem := pem_ca_problem(ca_pem)):
            raise ConfigError(f"--broker-ca (JITMESH_BROKER_CA) {problem}")
        policy_path = args.policy_path.strip("/")
        if not policy_path or any(not part.replace("_", "").isalnum() for part in policy_path.split("/")):
            raise ConfigError(f"--policy-path {args.policy_path!r}: expected a Rego path like jitmesh/access/decision")
        if not 0 <= args.leeway <= 30:
            raise ConfigError(f"--leeway {args.leeway}: from 0 to 30 seconds (docs/contract.md §7)")
        for name in ("stream_max_down", "keys_max_staleness", "header_timeout", "policy_refresh"):
            if getattr(args, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
        return cls(
            listen=_listen("--listen", args.listen),
            upstream=_url("--upstream", args.upstream) if args.upstream else None,
            audiences=audiences,
            broker_url=_url("--broker-url", args.broker_url),
            broker_ca_file=ca,
            broker_ca_pem=ca_pem,
            sa_token_file=token_file,
            policy_path=policy_path,
            opa_url=_url("--opa-url", args.opa_url) if args.opa_url else None,
            metrics_listen=_listen("--metrics-listen", args.metrics_listen) if args.metrics_listen else None,
            stream_max_down=args.stream_max_down,
            keys_max_staleness=args.keys_max_staleness,
            header_timeout=args.header_timeout,
            leeway=args.leeway,
            policy_refresh=args.policy_refresh,
        )
