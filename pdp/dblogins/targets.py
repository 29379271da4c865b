"""The `--targets-file` (docs/contract.md §9): per audience of kind `postgresql`, how the broker
reaches the database as its admin and what a login there gets. Read and validated once at
start; every refusal names the key and what is wrong. The admin DSN is read from its own file
and is never part of a message or a repr."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jitmesh.contract import KIND_POSTGRESQL

TLS_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# PostgreSQL identifiers are at most 63 bytes; the login names are prefix + 32 hex digits
_ROLE = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_TARGET_KEYS = {"kind", "admin_dsn_file", "host", "port", "dbname", "tls", "scopes", "connection_limit",
                "admin_pool", "owner", "timeout", "unrecorded_grace"}
_TLS_KEYS = {"mode", "root_cert_file"}
MAX_ADMIN_POOL = 64
MAX_TIMEOUT = 60.0
DEFAULT_UNRECORDED_GRACE = 120.0
MAX_UNRECORDED_GRACE = 3600.0


class TargetsError(ValueError):
    """The targets file cannot be used; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class PostgresTarget:
    audience: str
    admin_dsn: str = field(repr=False)  # a secret: never logged
    host: str
    port: int
    dbname: str
    tls_mode: str
    root_cert_file: Path | None
    scopes: Mapping[str, tuple[str, ...]]  # scope -> the roles a login with it is a member of
    connection_limit: int
    admin_pool: int
    owner: str  # what a login's objects are reassigned to before it is dropped
    timeout: float  # seconds any one admin operation may take; past it the request is 503
    # a login this young with no audit record may be an issuance still under way (on any
    # replica); older, it is what a crash left between creating and recording, and is dropped
    unrecorded_grace: float = DEFAULT_UNRECORDED_GRACE

    def roles_for(self, scopes: tuple[str, ...]) -> tuple[str, ...]:
        """The roles the granted scopes give, each once, in a stable order."""
        return tuple(sorted({role for scope in scopes for role in self.scopes.get(scope, ())}))

    def admin_conninfo(self) -> dict[str, Any]:
        """Connection keywords for the admin pool: the DSN plus the TLS settings."""
        kw: dict[str, Any] = {"sslmode": self.tls_mode}
        if self.root_cert_file is not None:
            kw["sslrootcert"] = str(self.root_cert_file)
        return kw


@dataclass(frozen=True)
class Targets:
    postgresql: Mapping[str, PostgresTarget] = field(default_factory=dict)

    def get(self, audience: str) -> PostgresTarget | None:
        return self.postgresql.get(audience)


def _fail(where: str, what: str) -> TargetsError:
    return TargetsError(f"{where}: {what}")


def _int(doc: Mapping[str, Any], key: str, where: str, default: int | None, low: int, high: int) -> int:
    value = doc.get(key, default)
    if value is None:
        raise _fail(f"{where}.{key}", "is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{where}.{key}", f"{value!r:.40} is not a whole number in [{low}, {high}]")
    return value


def _role(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ROLE.fullmatch(value):
        raise _fail(where, f"{value!r:.80} is not a role name (lower-case letters, digits, '_' and '$', "
                    "starting with a letter or '_', at most 63)")
    return value


def _tls(doc: Any, where: str, base: Path) -> tuple[str, Path | None]:
    if doc is None:
        raise _fail(where, "is required: {mode: verify-full, root_cert_file: PATH}, or {mode: disable} "
                    "to say plainly that the admin connection is not encrypted")
    if not isinstance(doc, dict):
        raise _fail(where, f"must be a mapping with {sorted(_TLS_KEYS)}, not {type(doc).__name__}")
    unknown = sorted(set(doc) - _TLS_KEYS)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"is not a known key; expected one of {sorted(_TLS_KEYS)}")
    mode = doc.get("mode")
    if mode not in TLS_MODES:
        raise _fail(f"{where}.mode", f"{mode!r:.40} is not one of {', '.join(TLS_MODES)}")
    cert = doc.get("root_cert_file")
    if cert is None:
        if mode in ("verify-ca", "verify-full"):
            raise _fail(f"{where}.root_cert_file", f"is required with mode {mode}")
        return mode, None
    if not isinstance(cert, str) or not cert:
        raise _fail(f"{where}.root_cert_file", "must be a path")
    path = base / cert
    if not path.is_file():
        raise _fail(f"{where}.root_cert_file", f"{str(path)!r} is not a readable file")
    return mode, path


def conninfo_to_dict(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict as parse  # only when a targets file is read: the CLI starts lean
    return parse(dsn)


def _admin_dsn(value: Any, where: str, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, "is required: the path of a file holding the admin connection string")
    path = base / value
    try:
        dsn = path.read_text().strip()
    except OSError as exc:
        raise _fail(where, f"{str(path)!r} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not dsn:
        raise _fail(where, f"{str(path)!r} is empty; it must hold a PostgreSQL connection string")
    try:
        conninfo_to_dict(dsn)
    except Exception:  # the message may echo the DSN, a secret: say only that it is malformed
        raise _fail(where, f"{str(path)!r} does not hold a valid PostgreSQL connection string") from None
    return dsn


def _scopes(doc: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(doc, dict) or not doc:
        raise _fail(where, "is required: a mapping of scope to the roles it grants, e.g. {read: [orders_read]}")
    scopes: dict[str, tuple[str, ...]] = {}
    for scope, roles in doc.items():
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise _fail(f"{where}", f"{scope!r:.60} is not a scope token (RFC 6749 section 3.3)")
        if not isinstance(roles, list) or not roles:
            raise _fail(f"{where}.{scope}", "must be a non-empty list of role names")
        scopes[scope] = tuple(_role(r, f"{where}.{scope}") for r in roles)
    return scopes


def parse_target(audience: Any, doc: Any, base: Path) -> PostgresTarget:
    where = f"targets.{audience}"
    if not isinstance(audience, str) or not audience or " " in audience or len(audience) > 256:
        raise _fail("targets", f"{audience!r:.60} is not an audience name")
    if not isinstance(doc, dict):
        raise _fail(where, f"must be a mapping, not {type(doc).__name__}")
    unknown = sorted(set(doc) - _TARGET_KEYS)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}", f"is not a known key; expected some of {sorted(_TARGET_KEYS)}")
    if doc.get("kind") != KIND_POSTGRESQL:
        raise _fail(f"{where}.kind", f"{doc.get('kind')!r:.40} is not supported; the one kind is {KIND_POSTGRESQL}")
    dsn = _admin_dsn(doc.get("admin_dsn_file"), f"{where}.admin_dsn_file", base)
    parsed = conninfo_to_dict(dsn)
    host = doc.get("host", parsed.get("host"))
    if not isinstance(host, str) or not host:
        raise _fail(f"{where}.host", "is required (the host logins connect to) when the admin DSN names none")
    dbname = doc.get("dbname", parsed.get("dbname"))
    if not isinstance(dbname, str) or not dbname:
        raise _fail(f"{where}.dbname", "is required (the database logins connect to) when the admin DSN names none")
    default_port = int(str(parsed["port"])) if str(parsed.get("port", "")).isdigit() else 5432
    tls_mode, root_cert = _tls(doc.get("tls"), f"{where}.tls", base)
    if "owner" not in doc:
        raise _fail(f"{where}.owner", "is required: the role a login's objects are reassigned to before it is dropped")
    owner = _role(doc["owner"], f"{where}.owner")
    timeout = doc.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise _fail(f"{where}.timeout", f"{timeout!r:.40} is not a number of seconds in (0, {MAX_TIMEOUT:g}]")
    grace = doc.get("unrecorded_grace", DEFAULT_UNRECORDED_GRACE)
    if (isinstance(grace, bool) or not isinstance(grace, (int, float))
            or not timeout < grace <= MAX_UNRECORDED_GRACE):
        raise _fail(f"{where}.unrecorded_grace", f"{grace!r:.40} is not a number of seconds in "
                    f"({timeout:g} (the timeout), {MAX_UNRECORDED_GRACE:g}]: longer than any issuance takes, "
                    "plus the clock skew between replicas")
    return PostgresTarget(
        audience=audience, admin_dsn=dsn, host=host, dbname=dbname,
        port=_int(doc, "port", where, default_port, 1, 65535), tls_mode=tls_mode, root_cert_file=root_cert,
        scopes=_scopes(doc.get("scopes"), f"{where}.scopes"),
        connection_limit=_int(doc, "connection_limit", where, None, 1, 10_000),
        admin_pool=_int(doc, "admin_pool", where, 4, 1, MAX_ADMIN_POOL),
        owner=owner, timeout=float(timeout), unrecorded_grace=float(grace))


def parse_targets(text: str, source: str = "--targets-file", base: Path = Path(".")) -> Targets:
    """The targets in `text` (YAML); relative file names are read from `base`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TargetsError(f"{source}: not valid YAML{at}") from None
    if not isinstance(doc, dict) or set(doc) != {"targets"}:
        raise TargetsError(f"{source}: expected one top-level key, targets (a mapping of audience to target)")
    targets = doc["targets"]
    if not isinstance(targets, dict) or not targets:
        raise TargetsError(f"{source}: targets must be a non-empty mapping of audience to target")
    try:
        parsed = {str(aud): parse_target(aud, t, base) for aud, t in targets.items()}
    except TargetsError as exc:
        raise TargetsError(f"{source}: {exc}") from None
    return Targets(postgresql=parsed)


def load_targets(path: str) -> Targets:
    """The targets file at `path`, validated; TargetsError names what is wrong."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise TargetsError(f"--targets-file {path!r}: cannot be read ({exc.strerror or type(exc).__name__})") \
            from None
    return parse_targets(text, f"--targets-file {path}", file.parent)
