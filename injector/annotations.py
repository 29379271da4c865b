"""What an opted-in pod asks for, read from its `jitmesh.io/*` annotations (docs/contract.md §4)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from jitmesh.contract import (
    ANNOTATION_AUDIENCES,
    ANNOTATION_DPOP,
    ANNOTATION_KIND_PREFIX,
    ANNOTATION_PROTECT,
    ANNOTATION_SCOPES_PREFIX,
    ANNOTATION_SERVES,
    ANNOTATION_STATUS,
    ANNOTATION_TOKEN_DIR,
    ANNOTATION_TTL,
    ANNOTATION_UPSTREAM_CA_PREFIX,
    ANNOTATION_UPSTREAM_PREFIX,
    DEFAULT_TOKEN_DIR,
    KIND_JWT,
    KIND_POSTGRESQL,
    SCOPE_TOKEN,
    scopes_env_name,
    upstream_env_name,
)
from jitmesh.hostport import without_userinfo

ANNOTATION_DOMAIN = "jitmesh.io/"
MAX_TTL_SECONDS = 86400

# An audience names a token file and, through `jitmesh.io/scopes.<audience>`, part of an
# annotation key: letters, digits, '.', '-', '_', starting and ending with a letter or digit.
_AUDIENCE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_MAX_AUDIENCE = 63 - len("scopes.")  # the name part of an annotation key is at most 63 characters
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
# Paths the kubelet or the runtime already own inside a container.
_RESERVED_DIRS = ("/var/run/secrets/kubernetes.io", "/dev", "/proc", "/sys", "/etc", "/bin", "/sbin",
                  "/usr", "/lib", "/lib64")


class AnnotationError(ValueError):
    """A bad annotation: names it, says what is wrong and what would be right."""

    def __init__(self, annotation: str, problem: str) -> None:
        super().__init__(f"{annotation}: {problem}")
        self.annotation = annotation


@dataclass(frozen=True)
class ProxyRequest:
    """`jitmesh.io/protect: "<port>=<app-port>"` and `jitmesh.io/serves`: an access proxy on
    `port` in front of the app's `app_port`, accepting tokens for `serves`."""
    port: int
    app_port: int
    serves: tuple[str, ...]


@dataclass(frozen=True)
class UpstreamRequest:
    """`jitmesh.io/upstream.<audience>`: the sidecar forwards the app's plain requests to `url`
    with the audience's token; `ca_file` (`jitmesh.io/upstream-ca.<audience>`) verifies its TLS."""
    url: str
    ca_file: str | None = None


@dataclass(frozen=True)
class AudienceRequest:
    audience: str
    scopes: tuple[str, ...] = ()
    kind: str = KIND_JWT  # postgresql: the sidecar fetches a database login (docs/contract.md §9)
    upstream: UpstreamRequest | None = None


@dataclass(frozen=True)
class InjectionRequest:
    """The parsed annotations of a pod to inject."""

    audiences: tuple[AudienceRequest, ...]
    ttl: int | None = None
    token_dir: str = DEFAULT_TOKEN_DIR
    protect: ProxyRequest | None = None
    dpop: bool = False  # the sidecar holds a key and asks for DPoP-bound tokens

    @property
    def upstreams(self) -> tuple[AudienceRequest, ...]:
        """The audiences with an upstream, in the order the pod lists them."""
        return tuple(a for a in self.audiences if a.upstream is not None)


def parse_audience_list(raw: str, where: str) -> tuple[str, ...]:
    names = [a.strip() for a in raw.split(",")]
    if not any(names):
        raise AnnotationError(where, "is empty; expected comma-separated audiences, e.g. orders-db,payments-api")
    seen: dict[str, str] = {}
    for name in names:
        if not name:
            raise AnnotationError(where, f"{raw!r} has an empty entry; expected comma-separated audiences")
        if len(name) > _MAX_AUDIENCE or not _AUDIENCE.fullmatch(name):
            raise AnnotationError(where, f"audience {name!r} is not valid; expected at most {_MAX_AUDIENCE} "
                                  "letters, digits, '.', '-' or '_', starting and ending with a letter or "
                                  "digit (it names a token file)")
        env = scopes_env_name(name)
        if env in seen:
            raise AnnotationError(where, f"audiences {seen[env]!r} and {name!r} are the same or share the "
                                  f"sidecar variable {env}; list each audience once")
        seen[env] = name
    return tuple(names)


def parse(annotations: Mapping[str, str], default_audiences: tuple[str, ...] = ()) -> InjectionRequest:
    """The injection a pod asks for, or AnnotationError naming the first bad annotation."""
    known = {ANNOTATION_AUDIENCES, ANNOTATION_TTL, ANNOTATION_TOKEN_DIR, ANNOTATION_STATUS, ANNOTATION_PROTECT,
             ANNOTATION_SERVES, ANNOTATION_DPOP}
    prefixes = (ANNOTATION_SCOPES_PREFIX, ANNOTATION_KIND_PREFIX, ANNOTATION_UPSTREAM_PREFIX,
                ANNOTATION_UPSTREAM_CA_PREFIX)
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_DOMAIN) and key not in known and not key.startswith(prefixes):
            raise AnnotationError(key, "is not a jitmesh annotation; expected one of "
                                  f"{ANNOTATION_AUDIENCES}, {ANNOTATION_SCOPES_PREFIX}<audience>, "
                                  f"{ANNOTATION_KIND_PREFIX}<audience>, {ANNOTATION_TTL}, {ANNOTATION_TOKEN_DIR}, "
                                  f"{ANNOTATION_PROTECT}, {ANNOTATION_SERVES}, {ANNOTATION_DPOP}, "
                                  f"{ANNOTATION_UPSTREAM_PREFIX}<audience>, {ANNOTATION_UPSTREAM_CA_PREFIX}<audience>")

    protect = _protect(annotations.get(ANNOTATION_PROTECT), annotations.get(ANNOTATION_SERVES))
    names: tuple[str, ...]
    if ANNOTATION_AUDIENCES in annotations:
        names = parse_audience_list(annotations[ANNOTATION_AUDIENCES], ANNOTATION_AUDIENCES)
    elif default_audiences:
        names = default_audiences
    elif protect is not None:
        names = ()  # a server that only receives tokens needs no credential sidecar
    else:
        raise AnnotationError(ANNOTATION_AUDIENCES, "is required for an injected pod: the comma-separated "
                              "audiences to fetch tokens for, e.g. orders-db")

    scopes: dict[str, tuple[str, ...]] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_SCOPES_PREFIX):
            continue
        audience = key[len(ANNOTATION_SCOPES_PREFIX):]
        if audience not in names:
            raise AnnotationError(key, f"names audience {audience!r}, which is not among the pod's audiences "
                                  f"({', '.join(names)}); add it to {ANNOTATION_AUDIENCES} or remove this")
        tokens = tuple(annotations[key].split())
        for scope in tokens:
            if not SCOPE_TOKEN.fullmatch(scope):
                raise AnnotationError(key, f"scope {scope!r} has characters RFC 6749 does not allow; expected "
                                      "space-separated scopes of printable ASCII without '\"' or '\\'")
        scopes[audience] = tokens

    kinds: dict[str, str] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_KIND_PREFIX):
            continue
        audience = key[len(ANNOTATION_KIND_PREFIX):]
        if audience not in names:
            raise AnnotationError(key, f"names audience {audience!r}, which is not among the pod's audiences "
                                  f"({', '.join(names)}); add it to {ANNOTATION_AUDIENCES} or remove this")
        kind = annotations[key].strip()
        if kind not in (KIND_POSTGRESQL, KIND_JWT):
            raise AnnotationError(key, f"{annotations[key]!r:.40} is not a kind; expected {KIND_POSTGRESQL} "
                                  f"(a database login) or {KIND_JWT}")
        kinds[audience] = kind

    upstreams = _upstreams(annotations, names, kinds)
    dpop = _dpop(annotations.get(ANNOTATION_DPOP), names)
    return InjectionRequest(
        audiences=tuple(AudienceRequest(n, scopes.get(n, ()), kinds.get(n, KIND_JWT), upstreams.get(n))
                        for n in names),
        ttl=_ttl(annotations.get(ANNOTATION_TTL)),
        token_dir=_token_dir(annotations.get(ANNOTATION_TOKEN_DIR)),
        protect=protect,
        dpop=dpop,
    )


def _dpop(raw: str | None, names: tuple[str, ...]) -> bool:
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise AnnotationError(ANNOTATION_DPOP, f"{raw!r:.40} is neither \"true\" nor \"false\"")
    if raw == "true" and not names:
        raise AnnotationError(ANNOTATION_DPOP, f"needs {ANNOTATION_AUDIENCES}: DPoP binds the tokens the sidecar "
                              "fetches, and this pod fetches none")
    return raw == "true"


def _upstream_url(key: str, raw: str) -> str:
    url = raw.strip()
    shown = without_userinfo(url)  # a refusal never repeats a password
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError as exc:
        raise AnnotationError(key, f"{shown!r:.80} is not a valid URL ({exc}); expected e.g. "
                              "https://payments.example:8443/api") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnnotationError(key, f"{shown!r:.80} is not an absolute http or https URL with a host, e.g. "
                              "https://payments.example:8443/api")
    if parts.username is not None or parts.password is not None:
        raise AnnotationError(key, f"{shown!r:.80} carries user information; the sidecar "
                              "sends the audience's token, so give the URL without user@")
    if "#" in url:
        raise AnnotationError(key, f"{shown!r:.80} has a fragment; give the upstream's base URL without '#'")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7e for c in url):
        raise AnnotationError(key, f"{shown!r:.80} has spaces or characters outside printable ASCII; "
                              "percent-encode them")
    return url


def _upstreams(annotations: Mapping[str, str], names: tuple[str, ...],
               kinds: Mapping[str, str]) -> dict[str, UpstreamRequest]:
    urls: dict[str, str] = {}
    env_names: dict[str, str] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_UPSTREAM_PREFIX):
            continue
        audience = key[len(ANNOTATION_UPSTREAM_PREFIX):]
        if audience not in names:
            raise AnnotationError(key, f"names audience {audience!r}, which is not among the pod's audiences "
                                  f"({', '.join(names) or 'none'}); add it to {ANNOTATION_AUDIENCES} or remove this")
        if kinds.get(audience, KIND_JWT) != KIND_JWT:
            raise AnnotationError(key, f"audience {audience!r} is a {kinds[audience]} login, not a token the "
                                  "sidecar can send over HTTP; remove this or the kind")
        env = upstream_env_name(audience)
        if env in env_names:
            raise AnnotationError(key, f"audiences {env_names[env]!r} and {audience!r} would both be announced "
                                  f"as {env}; rename one")
        env_names[env] = audience
        urls[audience] = _upstream_url(key, annotations[key])
    cas: dict[str, str] = {}
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_UPSTREAM_CA_PREFIX):
            continue
        audience = key[len(ANNOTATION_UPSTREAM_CA_PREFIX):]
        if audience not in urls:
            raise AnnotationError(key, f"names audience {audience!r}, which has no "
                                  f"{ANNOTATION_UPSTREAM_PREFIX}{audience}; a CA only verifies an https upstream")
        if urlsplit(urls[audience]).scheme != "https":
            raise AnnotationError(key, f"the upstream of {audience!r} is plain http ({urls[audience]!r:.80}); "
                                  "a CA only verifies an https upstream: use https or remove this")
        path = annotations[key].strip()
        if (not path.startswith("/") or posixpath.normpath(path) != path or path == "/" or ":" in path
                or any(c.isspace() for c in path)):
            raise AnnotationError(key, f"{annotations[key]!r:.80} is not a normalised absolute file path in the "
                                  "pod, e.g. /etc/payments-ca/ca.crt")
        cas[audience] = path
    return {a: UpstreamRequest(u, cas.get(a)) for a, u in urls.items()}


def _port(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= 65535:
        raise AnnotationError(ANNOTATION_PROTECT, f"{what} {text!r:.20} is not a port from 1 to 65535")
    return int(text)


def _protect(raw: str | None, serves: str | None) -> ProxyRequest | None:
    if raw is None:
        if serves is not None:
            raise AnnotationError(ANNOTATION_SERVES, f"needs {ANNOTATION_PROTECT}: the port to put the access proxy "
                                  "on, e.g. \"8443=8080\"")
        return None
    port_text, sep, app_text = raw.strip().partition("=")
    if not sep:
        raise AnnotationError(ANNOTATION_PROTECT, f"{raw!r:.60} is not <port>=<app-port>, e.g. \"8443=8080\": the "
                              "proxy listens on the first and forwards to the app on the second")
    port, app_port = _port(port_text.strip(), "the proxy's port"), _port(app_text.strip(), "the app's port")
    if port == app_port:
        raise AnnotationError(ANNOTATION_PROTECT, f"{raw!r:.60} names port {port} twice: the proxy and the app "
                              "cannot listen on the same port; e.g. \"8443=8080\"")
    if serves is None:
        raise AnnotationError(ANNOTATION_PROTECT, f"needs {ANNOTATION_SERVES}: the comma-separated audiences "
                              "whose tokens the proxy accepts, e.g. orders-api")
    return ProxyRequest(port=port, app_port=app_port, serves=parse_audience_list(serves, ANNOTATION_SERVES))


def _ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or not 0 < int(text) <= MAX_TTL_SECONDS:
        raise AnnotationError(ANNOTATION_TTL, f"{raw!r} is not a whole number of seconds between 1 and "
                              f"{MAX_TTL_SECONDS}, e.g. \"300\"")
    return int(text)


def _token_dir(raw: str | None) -> str:
    if raw is None:
        return DEFAULT_TOKEN_DIR
    path = raw.strip()
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or path == "/" or ":" in path:
        raise AnnotationError(ANNOTATION_TOKEN_DIR, f"{raw!r} is not a normalised absolute directory, e.g. "
                              f"{DEFAULT_TOKEN_DIR}")
    path = path.rstrip("/")
    for reserved in _RESERVED_DIRS:
        if path == reserved or path.startswith(reserved + "/"):
            raise AnnotationError(ANNOTATION_TOKEN_DIR, f"{raw!r} is inside {reserved}, which the container "
                                  f"runtime or kubelet owns; choose another directory, e.g. {DEFAULT_TOKEN_DIR}")
    return path
