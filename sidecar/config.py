"""The sidecar's configuration, read once from the environment (docs/contract.md §1).

Contract variables: JITMESH_BROKER_URL, JITMESH_AUDIENCES, JITMESH_SCOPES_<AUDIENCE>,
JITMESH_KIND_<AUDIENCE> (`postgresql`: a database login, docs/contract.md §9; else a JWT),
JITMESH_TTL, JITMESH_SA_TOKEN_FILE, JITMESH_TOKEN_DIR, JITMESH_LISTEN.

Extras of the sidecar's own (all optional):

| variable | default | meaning |
|---|---|---|
| JITMESH_FILE_MODE | 0640 | octal mode of each token file |
| JITMESH_TOKEN_GROUP | unset | group (name or gid) of each token file, for an app running as another user |
| JITMESH_REFRESH_AFTER | 0.5-0.8 | refresh at a random point in this fraction window of the token's lifetime |
| JITMESH_BACKOFF_INITIAL | 1 | seconds before the first retry after a failure |
| JITMESH_BACKOFF_MAX | 30 | ceiling of the exponential backoff, seconds |
| JITMESH_REASK_JITTER | 1 | after a revocation removes a file, ask again after a random delay up to this many seconds |
| JITMESH_EXPIRY_MARGIN | 1 | a token is removed this many seconds before its `exp` |
| JITMESH_REQUEST_TIMEOUT | 10 | timeout of one call to the broker, seconds |
| JITMESH_SHUTDOWN_TIMEOUT | 1.5 | how long SIGTERM waits for the broker to revoke, seconds |
| JITMESH_BROKER_CA_FILE | unset | PEM bundle to verify an https broker (default: system CAs) |
| JITMESH_BROKER_CA | unset | the same bundle inline, as PEM text (what the injector sets with --broker-ca-file) |
| JITMESH_DPOP | false | `true`: hold a P-256 key in memory and ask for DPoP-bound tokens (RFC 9449) |
| JITMESH_UPSTREAM_URL_<AUDIENCE> | unset | forward plain requests to this http(s) URL with the audience's token |
| JITMESH_UPSTREAM_LISTEN_<AUDIENCE> | unset | the loopback HOST:PORT to forward the upstream from (with the URL) |
| JITMESH_UPSTREAM_CA_<AUDIENCE> | unset | PEM bundle that verifies an https upstream (default: system CAs) |
| JITMESH_UPSTREAM_TIMEOUT | 30 | seconds an upstream may take to connect, or between two reads of its answer |

`<AUDIENCE>` is the audience upper-cased, every character other than a letter or digit as `_`.

The injector sets JITMESH_TOKEN_GROUP to the pod's fsGroup, or else to the sidecar's group,
which it adds to the pod's supplementalGroups. JITMESH_FILE_GROUP is its older name.
"""

from __future__ import annotations

import functools
import grp
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jitmesh.contract import (
    DEFAULT_TOKEN_DIR,
    ENV_AUDIENCES,
    ENV_BROKER_CA,
    ENV_BROKER_URL,
    ENV_DPOP,
    ENV_LISTEN,
    ENV_SA_TOKEN_FILE,
    ENV_TOKEN_DIR,
    ENV_TOKEN_GROUP,
    ENV_TTL,
    ENV_UPSTREAM_CA_PREFIX,
    ENV_UPSTREAM_LISTEN_PREFIX,
    ENV_UPSTREAM_URL_PREFIX,
    KIND_JWT,
    KIND_POSTGRESQL,
    audience_env_suffix,
    kind_env_name,
    scopes_env_name,
)
from jitmesh.hostport import split_host_port, without_userinfo
from jitmesh.tls import pem_ca_problem

ENV_FILE_MODE = "JITMESH_FILE_MODE"
ENV_FILE_GROUP_OLD = "JITMESH_FILE_GROUP"
ENV_REFRESH_AFTER = "JITMESH_REFRESH_AFTER"
ENV_BACKOFF_INITIAL = "JITMESH_BACKOFF_INITIAL"
ENV_BACKOFF_MAX = "JITMESH_BACKOFF_MAX"
ENV_EXPIRY_MARGIN = "JITMESH_EXPIRY_MARGIN"
ENV_REASK_JITTER = "JITMESH_REASK_JITTER"
ENV_REQUEST_TIMEOUT = "JITMESH_REQUEST_TIMEOUT"
ENV_SHUTDOWN_TIMEOUT = "JITMESH_SHUTDOWN_TIMEOUT"
ENV_BROKER_CA_FILE = "JITMESH_BROKER_CA_FILE"
ENV_UPSTREAM_TIMEOUT = "JITMESH_UPSTREAM_TIMEOUT"

DEFAULT_LISTEN = "127.0.0.1:8099"

# An audience names a file in the token directory and an environment variable:
# no path separators, no leading dot (temp files start with one).
_AUDIENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class ConfigError(ValueError):
    """Bad sidecar configuration; the message names the variable and what would be right."""


@dataclass(frozen=True)
class UpstreamSpec:
    """Where the sidecar forwards an audience's requests: it listens on `listen_host:listen_port`
    (loopback) and sends each request on to `url` with the audience's token."""

    audience: str
    url: str
    listen_host: str
    listen_port: int
    ca_file: Path | None = None

    def tls_verify(self) -> ssl.SSLContext | bool:
        """What verifies an https upstream: its CA file, else the system's CAs."""
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


@dataclass(frozen=True)
class AudienceSpec:
    audience: str
    scopes: tuple[str, ...] = ()
    kind: str = KIND_JWT  # postgresql: the broker answers with a database login, written as a libpq URI

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


@dataclass(frozen=True)
class SidecarConfig:
    broker_url: str
    audiences: tuple[AudienceSpec, ...]
    sa_token_file: Path
    token_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8099
    ttl: int | None = None
    file_mode: int = 0o640
    file_gid: int | None = None
    refresh_after: tuple[float, float] = (0.5, 0.8)
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    expiry_margin: float = 1.0
    reask_jitter: float = 1.0
    request_timeout: float = 10.0
    shutdown_timeout: float = 1.5
    broker_ca_file: Path | None = None
    broker_ca_pem: str | None = None
    dpop: bool = False  # a P-256 key in memory; every token asked for is bound to it
    upstreams: tuple[UpstreamSpec, ...] = ()
    upstream_timeout: float = 30.0

    def tls_verify(self) -> ssl.SSLContext:
        """What verifies an https broker: the JITMESH_BROKER_CA_FILE or JITMESH_BROKER_CA bundle,
        else the CAs httpx trusts by default (certifi's). One context, shared by every client of
        the broker (each context holds its own copy of the CAs); a plain-http broker gets one
        that trusts nothing, so no CA bundle is loaded for TLS the sidecar never speaks."""
        return _tls_context(self.broker_url.startswith("https:"), self.broker_ca_file, self.broker_ca_pem)

    @property
    def token_endpoint(self) -> str:
        return self.broker_url + "/token"

    @property
    def revocation_endpoint(self) -> str:
        return self.broker_url + "/revoke"

    def upstream(self, name: str) -> UpstreamSpec | None:
        return next((u for u in self.upstreams if u.audience == name), None)

    def audience(self, name: str) -> AudienceSpec | None:
        return next((a for a in self.audiences if a.audience == name), None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SidecarConfig:
        audiences = _audiences(environ)
        host, port = _listen(environ.get(ENV_LISTEN, DEFAULT_LISTEN))
        backoff_initial = _seconds(environ, ENV_BACKOFF_INITIAL, 1.0)
        backoff_max = _seconds(environ, ENV_BACKOFF_MAX, 30.0)
        if backoff_max < backoff_initial:
            raise ConfigError(f"{ENV_BACKOFF_MAX}={backoff_max:g} is below {ENV_BACKOFF_INITIAL}="
                              f"{backoff_initial:g}; the ceiling must be at least the first delay")
        return cls(
            broker_url=_broker_url(environ.get(ENV_BROKER_URL, "")),
            audiences=audiences,
            sa_token_file=_sa_token_file(environ.get(ENV_SA_TOKEN_FILE, "")),
            token_dir=_token_dir(environ.get(ENV_TOKEN_DIR, DEFAULT_TOKEN_DIR)),
            listen_host=host,
            listen_port=port,
            ttl=_ttl(environ.get(ENV_TTL)),
            file_mode=_file_mode(environ.get(ENV_FILE_MODE, "0640")),
            file_gid=_file_group(*_token_group_setting(environ)),
            refresh_after=_refresh_after(environ.get(ENV_REFRESH_AFTER, "0.5-0.8")),
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            expiry_margin=_seconds(environ, ENV_EXPIRY_MARGIN, 1.0, allow_zero=True),
            reask_jitter=_seconds(environ, ENV_REASK_JITTER, 1.0, allow_zero=True),
            request_timeout=_seconds(environ, ENV_REQUEST_TIMEOUT, 10.0),
            shutdown_timeout=_seconds(environ, ENV_SHUTDOWN_TIMEOUT, 1.5),
            broker_ca_file=_ca_file(environ.get(ENV_BROKER_CA_FILE)),
            broker_ca_pem=_ca_pem(environ.get(ENV_BROKER_CA), environ.get(ENV_BROKER_CA_FILE)),
            dpop=_dpop(environ.get(ENV_DPOP)),
            upstreams=_upstreams(environ, audiences, (host, port)),
            upstream_timeout=_seconds(environ, ENV_UPSTREAM_TIMEOUT, 30.0),
        )


def _dpop(raw: str | None) -> bool:
    if raw is None or not raw.strip():
        return False
    if raw.strip() not in ("true", "false"):
        raise ConfigError(f"{ENV_DPOP}={raw!r:.40} is neither true nor false")
    return raw.strip() == "true"


def upstream_url_problem(raw: str) -> str | None:
    """What is wrong with an upstream's URL, or None: an absolute http(s) URL with a host,
    without user information or a fragment."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http or https URL with a host"
    if parts.username is not None or parts.password is not None or "#" in raw:
        return "must not carry user information or a fragment"
    if any(c.isspace() or not 0x21 <= ord(c) <= 0x7e for c in raw):
        return "has spaces or characters outside printable ASCII"
    return None


def _upstreams(environ: Mapping[str, str], audiences: tuple[AudienceSpec, ...],
               api: tuple[str, int]) -> tuple[UpstreamSpec, ...]:
    known = {audience_env_suffix(a.audience): a for a in audiences}
    for name in sorted(environ):
        for prefix in (ENV_UPSTREAM_URL_PREFIX, ENV_UPSTREAM_LISTEN_PREFIX, ENV_UPSTREAM_CA_PREFIX):
            if name.startswith(prefix) and name[len(prefix):] not in known:
                raise ConfigError(f"{name} names no audience of {ENV_AUDIENCES}; expected {prefix}<AUDIENCE> "
                                  f"with one of {', '.join(sorted(known))}")
    specs: list[UpstreamSpec] = []
    taken: dict[tuple[str, int], str] = {api: ENV_LISTEN}
    for suffix, spec in known.items():
        url_env, listen_env, ca_env = (ENV_UPSTREAM_URL_PREFIX + suffix, ENV_UPSTREAM_LISTEN_PREFIX + suffix,
                                       ENV_UPSTREAM_CA_PREFIX + suffix)
        url = environ.get(url_env, "").strip()
        listen = environ.get(listen_env, "").strip()
        ca = environ.get(ca_env, "").strip()
        if not url:
            for env, value in ((listen_env, listen), (ca_env, ca)):
                if value:
                    raise ConfigError(f"{env} is set but {url_env} is not; give the upstream's URL")
            continue
        problem = upstream_url_problem(url)
        if problem:
            raise ConfigError(f"{url_env}={without_userinfo(url)!r:.100} {problem}, e.g. "
                              "https://payments.example:8443/api")
        if spec.kind != KIND_JWT:
            raise ConfigError(f"{url_env}: audience {spec.audience!r} is a {spec.kind} login, not a token the "
                              "sidecar can send over HTTP")
        if not listen:
            raise ConfigError(f"{listen_env} is not set; expected the loopback HOST:PORT to forward "
                              f"{spec.audience!r} from, e.g. 127.0.0.1:15100")
        parsed = split_host_port(listen)
        if parsed is None:
            raise ConfigError(f"{listen_env}={listen!r} is not HOST:PORT, e.g. 127.0.0.1:15100")
        if parsed[0] not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError(f"{listen_env}={listen!r}: the forwarder adds a credential to what it is sent, "
                              "so it listens on loopback only, e.g. 127.0.0.1:15100")
        if parsed in taken:
            raise ConfigError(f"{listen_env}={listen!r} is also {taken[parsed]}; give each its own port")
        taken[parsed] = listen_env
        ca_file: Path | None = None
        if ca:
            if urlsplit(url).scheme != "https":
                raise ConfigError(f"{ca_env} is set but {url_env}={url!r:.100} is plain http; a CA only "
                                  "verifies an https upstream")  # url has passed: no user information
            ca_file = _pem_file(ca_env, ca)
        specs.append(UpstreamSpec(spec.audience, url, parsed[0], parsed[1], ca_file))
    return tuple(specs)


def _broker_url(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        raise ConfigError(f"{ENV_BROKER_URL} is not set; expected the broker's base URL, e.g. "
                          "https://jitmesh-broker.jitmesh.svc:8443")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise ConfigError(f"{ENV_BROKER_URL}={raw!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{ENV_BROKER_URL}={raw!r} is not an http(s) URL with a host, "
                          "e.g. https://jitmesh-broker.jitmesh.svc:8443")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{ENV_BROKER_URL}={raw!r} must not carry credentials, a query or a fragment")
    return raw.rstrip("/")


def _audiences(environ: Mapping[str, str]) -> tuple[AudienceSpec, ...]:
    raw = environ.get(ENV_AUDIENCES, "")
    names = [a.strip() for a in raw.split(",") if a.strip()]
    if not names:
        raise ConfigError(f"{ENV_AUDIENCES} is empty or not set; expected comma-separated audiences, "
                          "e.g. orders-db,payments-api")
    specs: list[AudienceSpec] = []
    seen: dict[str, str] = {}
    for name in names:
        if not _AUDIENCE.fullmatch(name):
            raise ConfigError(f"{ENV_AUDIENCES}: audience {name!r} is not valid; expected letters, digits, "
                              "'.', '-' or '_', starting with a letter or digit (it names a file)")
        env = scopes_env_name(name)
        if env in seen:
            raise ConfigError(f"{ENV_AUDIENCES}: audiences {seen[env]!r} and {name!r} are duplicates or "
                              f"share the scope variable {env}")
        seen[env] = name
        scopes = tuple(environ.get(env, "").split())
        for s in scopes:
            if not _SCOPE_TOKEN.fullmatch(s):
                raise ConfigError(f"{env}: scope {s!r} has characters RFC 6749 does not allow in a scope")
        kind_env = kind_env_name(name)
        kind = environ.get(kind_env, "").strip() or KIND_JWT
        if kind not in (KIND_JWT, KIND_POSTGRESQL):
            raise ConfigError(f"{kind_env}={kind!r} is not a kind; expected {KIND_POSTGRESQL} or {KIND_JWT}")
        specs.append(AudienceSpec(name, scopes, kind))
    return tuple(specs)


def _sa_token_file(raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"{ENV_SA_TOKEN_FILE} is not set; expected the path of the projected "
                          "ServiceAccount token")
    path = Path(raw.strip())
    try:
        content = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{ENV_SA_TOKEN_FILE}={raw!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{ENV_SA_TOKEN_FILE}={raw!r} is not a text file holding a JWT") from None
    if not content:
        raise ConfigError(f"{ENV_SA_TOKEN_FILE}={raw!r} is empty; expected a ServiceAccount JWT")
    return path


def _token_dir(raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"{ENV_TOKEN_DIR} is empty; expected a directory for the token files")
    path = Path(raw.strip())
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{ENV_TOKEN_DIR}={raw!r} exists and is not a directory")
    return path


def _listen(raw: str) -> tuple[str, int]:
    parsed = split_host_port(raw)
    if parsed is None:
        raise ConfigError(f"{ENV_LISTEN}={raw!r} is not HOST:PORT, e.g. 127.0.0.1:8099")
    return parsed


def _ttl(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        ttl = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{ENV_TTL}={raw!r} is not a whole number of seconds") from None
    if ttl <= 0:
        raise ConfigError(f"{ENV_TTL}={raw!r} must be a positive number of seconds")
    return ttl


def _seconds(environ: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf") or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={raw!r} must be a {'non-negative' if allow_zero else 'positive'} "
                          "finite number of seconds")
    return value


def _file_mode(raw: str) -> int:
    try:
        mode = int(raw.strip(), 8)
    except ValueError:
        raise ConfigError(f"{ENV_FILE_MODE}={raw!r} is not an octal file mode, e.g. 0640") from None
    if mode & ~0o777:
        raise ConfigError(f"{ENV_FILE_MODE}={raw!r} may only set permission bits (0000-0777)")
    if not mode & 0o400:
        raise ConfigError(f"{ENV_FILE_MODE}={raw!r} leaves the file unreadable by its owner")
    if mode & 0o002 or mode & 0o001:
        raise ConfigError(f"{ENV_FILE_MODE}={raw!r} gives other users write or execute; use e.g. 0644 or 0640")
    return mode


def _token_group_setting(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The token group's value and the variable it came from (the current name wins)."""
    for name in (ENV_TOKEN_GROUP, ENV_FILE_GROUP_OLD):
        if environ.get(name, "").strip():
            return environ[name], name
    return None, ENV_TOKEN_GROUP


def _file_group(raw: str | None, name: str = ENV_TOKEN_GROUP) -> int | None:
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if raw.isdigit():
        return int(raw)
    try:
        return grp.getgrnam(raw).gr_gid
    except KeyError:
        raise ConfigError(f"{name}={raw!r} is neither a numeric gid nor a known group") from None


def _refresh_after(raw: str) -> tuple[float, float]:
    lo_s, sep, hi_s = raw.strip().partition("-")
    try:
        lo = float(lo_s)
        hi = float(hi_s) if sep else lo
    except ValueError:
        raise ConfigError(f"{ENV_REFRESH_AFTER}={raw!r} is not a fraction window like 0.5-0.8") from None
    if not 0.1 <= lo <= hi <= 0.95:
        raise ConfigError(f"{ENV_REFRESH_AFTER}={raw!r}: fractions must satisfy 0.1 <= low <= high <= 0.95")
    return lo, hi


def _ca_pem(raw: str | None, file: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    if file and file.strip():
        raise ConfigError(f"{ENV_BROKER_CA} and {ENV_BROKER_CA_FILE} are both set; give the broker's CA one way")
    problem = pem_ca_problem(raw)
    if problem:
        raise ConfigError(f"{ENV_BROKER_CA} {problem}")
    return raw


def _ca_file(raw: str | None) -> Path | None:
    if raw is None or not raw.strip():
        return None
    return _pem_file(ENV_BROKER_CA_FILE, raw)


def _pem_file(name: str, raw: str) -> Path:
    path = Path(raw.strip())
    try:
        pem = path.read_text()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{name}={raw!r} is not a readable PEM file") from None
    problem = pem_ca_problem(pem)
    if problem:
        raise ConfigError(f"{name}={raw!r} {problem}")
    return path


@functools.lru_cache(maxsize=4)
def _tls_context(https: bool, ca_file: Path | None, ca_pem: str | None) -> ssl.SSLContext:
    if ca_file:
        return ssl.create_default_context(cafile=str(ca_file))
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    if not https:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names; trusts no CA
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
