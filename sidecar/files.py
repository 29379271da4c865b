"""Token files in the shared token directory (docs/contract.md §5).

A file is replaced atomically: the new token goes to a temp file in the same directory,
is flushed to disk with its final mode and group, then renamed over the old one. A reader
opening `<dir>/<audience>` sees the old token or the new one, never a partial file.
Temp files start with a dot, which no audience does, so they never shadow a token.

A database login (docs/contract.md §9) is two files: `<audience>` a libpq connection URI
(password included) and `<audience>.pgpass` (mode 0600, as libpq requires). The pgpass file is
replaced first, so a reader of the new URI never finds an older password beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

PGPASS_SUFFIX = ".pgpass"
PGPASS_MODE = 0o600  # libpq ignores a password file that group or others may read


def token_path(token_dir: Path, audience: str) -> Path:
    return token_dir / audience


def write_token(token_dir: Path, audience: str, token: str, mode: int, gid: int | None = None) -> Path:
    return _replace(token_dir, audience, token, mode, gid)


def login_uri(username: str, password: str, host: str, port: int, dbname: str, sslmode: str) -> str:
    """A libpq connection URI; every part percent-encoded."""
    where = f"[{host}]" if ":" in host else quote(host, safe="")
    return (f"postgresql://{quote(username, safe='')}:{quote(password, safe='')}@{where}:{port}/"
            f"{quote(dbname, safe='')}?sslmode={quote(sslmode, safe='')}")


def pgpass_line(username: str, password: str, host: str, port: int, dbname: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")
    return f"{esc(host)}:{port}:{esc(dbname)}:{esc(username)}:{esc(password)}\n"


def write_login(token_dir: Path, audience: str, uri: str, pgpass: str, mode: int, gid: int | None = None) -> Path:
    _replace(token_dir, audience + PGPASS_SUFFIX, pgpass, PGPASS_MODE, None)
    return _replace(token_dir, audience, uri, mode, gid)


def _replace(token_dir: Path, name: str, token: str, mode: int, gid: int | None) -> Path:
    target = token_dir / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=token_dir)
    try:
        # Mode and group are set before the name appears, so the token is never readable by more.
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
        data = token.encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(token_dir)
    return target


def remove_token(token_dir: Path, audience: str) -> bool:
    """Remove the token file; True when there was one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(token_dir / (audience + PGPASS_SUFFIX))
    try:
        os.unlink(token_path(token_dir, audience))
    except FileNotFoundError:
        return False
    _fsync_dir(token_dir)
    return True


def read_token(token_dir: Path, audience: str) -> str | None:
    try:
        return token_path(token_dir, audience).read_text().strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def remove_stale_temp_files(token_dir: Path, audience: str) -> None:
    """Temp files a killed sidecar left behind."""
    for p in token_dir.glob(f".{audience}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def prepare_token_dir(token_dir: Path, mode: int = 0o640, gid: int | None = None) -> None:
    """Create the directory and prove a token file can be written there with `mode` and
    `gid`, so a wrong directory or group fails at start rather than at the first token."""
    token_dir.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=token_dir)
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
    finally:
        os.close(fd)
        os.unlink(probe)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
