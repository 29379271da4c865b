"""The broker's configuration: every `jitmesh broker` flag (docs/contract.md §1), validated once
at start into a frozen dataclass that is passed down. No other broker module reads flags
or the environment."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from jitmesh.contract import DEFAULT_SUBJECT_AUDIENCE
from jitmesh.hostport import split_host_port
from pdp.dblogins.targets import Targets, TargetsError, load_targets

DEFAULT_POLICY_PATH = "jitmesh/authz/decision"
DEFAULT_STORE_URL = "sqlite:///.jitmesh/broker.db"
DEFAULT_SUBJECT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_LISTEN = "127.0.0.1:8080"

Attestation = Literal["jwks", "tokenreview"]
Enforcement = Literal["enforce", "dry-run"]


class ConfigError(ValueError):
    """A flag has a value the broker cannot run with; the message names the flag."""


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    parsed = split_host_port(value)
    if parsed is None:
        raise ConfigError(f"{flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return parsed


def _http_url(value: str, flag: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{flag} {value!r}: expected an http:// or https:// URL")
    return value.rstrip("/")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str, flag: str) -> float:
    """`90d`, `12h`, `30m`, `45s`, `2w`, or plain seconds, as seconds (positive)."""
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], None) if text else None
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"{flag} {value!r}: expected a positive duration like 90d, 12h, 30m or 45s")
    return seconds


def _seconds_in(value: float, flag: str, low: float, high: float) -> float:
    if not low < value <= high:
        raise ConfigError(f"{flag} {value}: expected seconds in ({low:g}, {high:g}]")
    return float(value)


def _positive(value: int, flag: str) -> int:
    if value <= 0:
        raise ConfigError(f"{flag} {value}: must be a positive number of seconds")
    return value


def _count(value: int, flag: str) -> int:
    if value <= 0:
        raise ConfigError(f"{flag} {value}: must be a positive number")
    return value


@dataclass(frozen=True)
class BrokerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    issuer: str = "http://127.0.0.1:8080"
    opa_url: str = "http://127.0.0.1:8181"
    policy_path: str = DEFAULT_POLICY_PATH
    shadow_policy_path: str | None = None
    shadow_policy_dir: Path | None = None  # the candidate's Rego and data, evaluated in-process as Wasm
    subject_audience: str = DEFAULT_SUBJECT_AUDIENCE
    attestation: Attestation = "jwks"
    jwks_file: Path | None = None
    jwks_url: str | None = None
    subject_issuer: str = DEFAULT_SUBJECT_ISSUER
    store_url: str = DEFAULT_STORE_URL
    admin_token_file: Path | None = None
    max_ttl: int = 3600
    default_ttl: int = 300
    key_rotation: int = 86400
    approval_ttl: int = 3600  # how long an approved access request covers new tokens
    tls_cert_file: Path | None = None  # serve HTTPS with this certificate and key (both or neither)
    tls_key_file: Path | None = None
    kubeconfig: Path | None = None
    pod_lookup: bool = False
    opa_timeout: float = 1.0
    revocation_max_staleness: float = 30.0
    resources: Mapping[str, str] = field(default_factory=dict)  # RFC 8693 resource URI -> audience
    max_subject_token_age: float | None = 86400.0  # refuse subject tokens issued longer ago (None: no limit)
    max_event_streams: int = 10_000  # open revocation event streams, overall
    max_event_streams_per_subject: int = 8
    access_policy_dir: Path | None = None  # served to proxies as OPA's Wasm build (pdp/access_bundle.py)
    opa_bin: str | None = None
    enforcement: Enforcement = "enforce"  # dry-run: policy denials are issued anyway (pdp/enforcement.py)
    reader_token_file: Path | None = None  # readers: introspection and the revocation event stream
    audit_retention: float = 90 * 86400.0  # audit records older than this are purged
    request_read_timeout: float = 10.0  # a request's headers and body must arrive within this
    max_connections: int = 10_000  # open connections and requests beyond this are answered 503
    admin_review_rate: float = 5.0  # API-server reviews of unknown bearer tokens per second per address
    admin_review_burst: int = 20
    targets: Targets = field(default_factory=Targets)  # --targets-file: brokered database logins (§9)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerConfig:
        host, port = parse_listen(args.listen)
        tls_cert, tls_key = _tls_files(getattr(args, "tls_cert_file", None), getattr(args, "tls_key_file", None))
        scheme = "https" if tls_cert else "http"
        issuer = _http_url(args.issuer or f"{scheme}://{args.listen}", "--issuer")
        opa_url = _http_url(args.opa_url, "--opa-url")
        policy_path = _policy_path(args.policy_path, "--policy-path")
        shadow = _policy_path(args.shadow_policy_path, "--shadow-policy-path") if args.shadow_policy_path else None
        if not args.subject_audience.strip():
            raise ConfigError("--subject-audience: must not be empty")
        attestation = args.attestation
        jwks_file = Path(args.jwks_file) if args.jwks_file else None
        jwks_url = _http_url(args.jwks_url, "--jwks-url") if args.jwks_url else None
        if attestation == "jwks":
            if (jwks_file is None) == (jwks_url is None):
                raise ConfigError("--attestation jwks needs exactly one of --jwks-file or --jwks-url")
            if jwks_file is not None and not jwks_file.is_file():
                raise ConfigError(f"--jwks-file {str(jwks_file)!r}: no such file")
        kubeconfig = Path(args.kubeconfig) if args.kubeconfig else None
        if kubeconfig is not None and not kubeconfig.is_file():
            raise ConfigError(f"--kubeconfig {str(kubeconfig)!r}: no such file")
        if not args.store.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(f"--store {args.store!r}: expected sqlite:///PATH or postgresql://...")
        admin = Path(args.admin_token_file) if args.admin_token_file else None
        if admin is not None and not admin.is_file():
            raise ConfigError(f"--admin-token-file {str(admin)!r}: no such file")
        max_ttl = _positive(args.max_ttl, "--max-ttl")
        # unset: 300 seconds, or --max-ttl when that is shorter
        default_ttl = min(300, max_ttl) if args.default_ttl is None else _positive(args.default_ttl, "--default-ttl")
        if default_ttl > max_ttl:
            raise ConfigError(f"--default-ttl {default_ttl} is longer than --max-ttl {max_ttl}")
        key_rotation = _positive(args.key_rotation, "--key-rotation")
        readers = Path(args.reader_token_file) if getattr(args, "reader_token_file", None) else None
        if readers is not None and not readers.is_file():
            raise ConfigError(f"--reader-token-file {str(readers)!r}: no such file")
        retention = parse_duration(getattr(args, "audit_retention", "90d"), "--audit-retention")
        if retention < max_ttl:
            raise ConfigError(f"--audit-retention {args.audit_retention}: shorter than --max-ttl {max_ttl}s; the "
                              "record of a token must outlive the token")
        read_timeout = _seconds_in(float(getattr(args, "request_read_timeout", 10.0)), "--request-read-timeout",
                                   0, 300)
        max_connections = int(getattr(args, "max_connections", 10_000))
        if max_connections < 1:
            raise ConfigError(f"--max-connections {max_connections}: must be at least 1")
        review_rate = float(getattr(args, "admin_review_rate", 5.0))
        review_burst = int(getattr(args, "admin_review_burst", 20))
        if not review_rate > 0 or review_burst < 1:
            raise ConfigError(f"--admin-review-rate {review_rate} / --admin-review-burst {review_burst}: expected a "
                              "positive rate and a burst of at least 1")
        approval_ttl = _positive(getattr(args, "approval_ttl", 3600), "--approval-ttl")
        max_age = getattr(args, "max_subject_token_age", 86400)
        if max_age < 0:
            raise ConfigError(f"--max-subject-token-age {max_age}: expected seconds, or 0 for no limit")
        max_streams = _count(getattr(args, "max_event_streams", 10_000), "--max-event-streams")
        per_subject = _count(getattr(args, "max_event_streams_per_subject", 8), "--max-event-streams-per-subject")
        try:
            targets = load_targets(args.targets_file) if getattr(args, "targets_file", None) else Targets()
        except TargetsError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 < args.opa_timeout <= 30:
            raise ConfigError(f"--opa-timeout {args.opa_timeout}: expected seconds in (0, 30]")
        return cls(
            listen_host=host, listen_port=port, issuer=issuer, opa_url=opa_url, policy_path=policy_path,
            shadow_policy_path=shadow, subject_audience=args.subject_audience, attestation=attestation,
            jwks_file=jwks_file, jwks_url=jwks_url, subject_issuer=args.subject_issuer, store_url=args.store,
            admin_token_file=admin, max_ttl=max_ttl, default_ttl=default_ttl, key_rotation=key_rotation,
            approval_ttl=approval_ttl, kubeconfig=kubeconfig, pod_lookup=bool(args.pod_lookup),
            opa_timeout=float(args.opa_timeout), enforcement=args.enforcement,
            max_subject_token_age=float(max_age) if max_age else None,
            resources=_resources(getattr(args, "resource", None) or []),
            max_event_streams=max_streams, max_event_streams_per_subject=per_subject,
            tls_cert_file=tls_cert, tls_key_file=tls_key, reader_token_file=readers, audit_retention=retention,
            request_read_timeout=read_timeout, max_connections=max_connections, admin_review_rate=review_rate,
            admin_review_burst=review_burst, targets=targets,
            access_policy_dir=_access_policy_dir(getattr(args, "access_policy_dir", None)),
            shadow_policy_dir=_shadow_policy_dir(getattr(args, "shadow_policy_dir", None), shadow),
            opa_bin=getattr(args, "opa_bin", None) or None,
        )


def _resources(pairs: list[str]) -> dict[str, str]:
    """--resource URI=AUDIENCE, repeated: the RFC 8693 resource URIs that name an audience."""
    resources: dict[str, str] = {}
    for pair in pairs:
        uri, sep, audience = pair.rpartition("=")
        parsed = urlsplit(uri)
        if not sep or not audience or not parsed.scheme or not parsed.netloc or parsed.fragment:
            raise ConfigError(f"--resource {pair!r}: expected URI=AUDIENCE with an absolute URI without a fragment, "
                              "e.g. https://orders.example.com/api=orders-api")
        if resources.get(uri, audience) != audience:
            raise ConfigError(f"--resource {uri!r} is given twice, for {resources[uri]!r} and {audience!r}")
        resources[uri] = audience
    return resources


def _access_policy_dir(raw: str | None) -> Path | None:
    if not raw:
        return None
    if not Path(raw).is_dir():
        raise ConfigError(f"--access-policy-dir {raw}: not a directory (the proxies' access policy and its data)")
    return Path(raw)


def _shadow_policy_dir(raw: str | None, shadow_policy_path: str | None) -> Path | None:
    if not raw:
        return None
    if shadow_policy_path is None:
        raise ConfigError(f"--shadow-policy-dir {raw}: needs --shadow-policy-path, the candidate's decision")
    if not Path(raw).is_dir():
        raise ConfigError(f"--shadow-policy-dir {raw}: not a directory (the candidate policy's Rego and data)")
    return Path(raw)


def _tls_files(cert: str | None, key: str | None) -> tuple[Path | None, Path | None]:
    """--tls-cert-file and --tls-key-file: both (HTTPS) or neither (plain HTTP)."""
    if not cert and not key:
        return None, None
    if not cert or not key:
        given, missing = ("--tls-cert-file", "--tls-key-file") if cert else ("--tls-key-file", "--tls-cert-file")
        raise ConfigError(f"{given} needs {missing} too: HTTPS takes the certificate and its private key")
    for flag, value in (("--tls-cert-file", cert), ("--tls-key-file", key)):
        if not Path(value).is_file():
            raise ConfigError(f"{flag} {value!r}: no such file")
    return Path(cert), Path(key)


def _policy_path(value: str, flag: str) -> str:
    path = value.strip("/")
    if not path or any(not seg or not seg.replace("_", "").isalnum() for seg in path.split("/")):
        raise ConfigError(f"{flag} {value!r}: expected a slash-separated OPA data path like {DEFAULT_POLICY_PATH}")
    return path


def add_broker_flags(p: Any) -> None:
    """The `jitmesh broker` flags; each is also `JITMESH_<FLAG>`."""
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve on (default %(default)s)")
    p.add_argument("--tls-cert-file", default=None,
                   help="serve HTTPS with this certificate (PEM), e.g. from `jitmesh certs`; needs --tls-key-file")
    p.add_argument("--tls-key-file", default=None, help="the private key (PEM) of --tls-cert-file")
    p.add_argument("--issuer", default=None, help="the `iss` of issued tokens (default http://LISTEN)")
    p.add_argument("--opa-url", default="http://127.0.0.1:8181", help="OPA base URL (default %(default)s)")
    p.add_argument("--opa-timeout", type=float, default=1.0, help="seconds to wait for OPA (default %(default)s)")
    p.add_argument("--policy-path", default=DEFAULT_POLICY_PATH, help="OPA data path of the decision")
    p.add_argument("--shadow-policy-path", default=None, help="data path of a candidate policy (unset: shadow off)")
    p.add_argument("--shadow-policy-dir", default=None,
                   help="Rego and data holding the candidate, built as Wasm with --opa-bin and evaluated in the "
                        "broker (unset, or when the build fails: the candidate is asked of OPA at --opa-url)")
    p.add_argument("--access-policy-dir", default=None,
                   help="Rego and data of the proxies' access policy, served to them built as Wasm (unset: not served)")
    p.add_argument("--opa-bin", default=None, help="the OPA binary that builds --access-policy-dir (default: "
                   "the one scripts/tools.sh built, else opa on PATH)")
    p.add_argument("--enforcement", choices=["enforce", "dry-run"], default="enforce",
                   help="dry-run: issue what the policy denies anyway, audited as dry_run_allowed "
                        "(default %(default)s)")
    p.add_argument("--subject-audience", default=DEFAULT_SUBJECT_AUDIENCE,
                   help="audience a ServiceAccount token must carry (default %(default)s)")
    p.add_argument("--attestation", choices=["jwks", "tokenreview"], default="jwks",
                   help="verify subject tokens offline against a JWKS, or online with TokenReview")
    p.add_argument("--jwks-file", default=None, help="the cluster's service-account JWKS (reloaded on change)")
    p.add_argument("--jwks-url", default=None, help="URL of the cluster's service-account JWKS")
    p.add_argument("--subject-issuer", default=DEFAULT_SUBJECT_ISSUER,
                   help="expected `iss` of ServiceAccount tokens (default %(default)s)")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig for TokenReview and pod lookups (default: in-cluster config)")
    p.add_argument("--pod-lookup", action="store_true",
                   help="read the bound pod from the API server (labels, images; refuse when gone)")
    p.add_argument("--store", default=DEFAULT_STORE_URL,
                   help="sqlite:///PATH or postgresql://... (default %(default)s)")
    p.add_argument("--admin-token-file", default=None, help="admin bearer tokens, one a line")
    p.add_argument("--resource", action="append", default=None, metavar="URI=AUDIENCE",
                   help="a resource URI (RFC 8693 `resource`) that names an audience; repeatable")
    p.add_argument("--max-subject-token-age", type=int, default=86400,
                   help="refuse subject tokens issued more than SECONDS ago (iat), so a long-lived "
                        "`kubectl create token` is no standing credential; 0: no limit (default %(default)s)")
    p.add_argument("--reader-token-file", default=None,
                   help="reader bearer tokens, one a line: /introspect and the revocation event stream only")
    p.add_argument("--audit-retention", default="90d",
                   help="keep audit records this long, e.g. 90d, 12h (default %(default)s; at least --max-ttl)")
    p.add_argument("--request-read-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's headers and body; then 408 (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=10_000,
                   help="open connections beyond this are answered 503 (default %(default)s)")
    p.add_argument("--admin-review-rate", type=float, default=5.0,
                   help="API-server reviews of unrecognised bearer tokens per second per client address; more "
                        "are answered 429 (default %(default)s)")
    p.add_argument("--admin-review-burst", type=int, default=20,
                   help="reviews a client address may ask for at once before --admin-review-rate applies "
                        "(default %(default)s)")
    p.add_argument("--max-ttl", type=int, default=3600, help="longest token lifetime in seconds (default %(default)s)")
    p.add_argument("--default-ttl", type=int, default=None,
                   help="lifetime when none is asked (default 300, at most --max-ttl)")
    p.add_argument("--approval-ttl", type=int, default=3600,
                   help="how long a human approval of an access request covers new tokens, in seconds "
                        "(default %(default)s)")
    p.add_argument("--max-event-streams", type=int, default=10_000,
                   help="most revocation event streams open at once (default %(default)s)")
    p.add_argument("--max-event-streams-per-subject", type=int, default=8,
                   help="most revocation event streams one subject (one pod, for a pod-bound ServiceAccount "
                        "token) may hold open; admins count only towards --max-event-streams (default %(default)s)")
    p.add_argument("--targets-file", default=None,
                   help="YAML: the PostgreSQL targets the broker makes short-lived logins on (docs/contract.md §9)")
    p.add_argument("--key-rotation", type=int, default=86400,
                   help="rotate the signing key every SECONDS (default %(default)s)")
