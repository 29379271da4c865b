"""Token files: atomic replacement, mode and group, cleanup on failure."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from sidecar import files


def test_written_file_has_the_configured_mode_and_group(tmp_path: Path) -> None:
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    path = files.write_token(tmp_path, "orders-db", "tok", 0o640, gid)
    st = path.stat()
    assert path.read_text() == "tok"
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid


def test_mode_is_not_narrowed_by_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = files.write_token(tmp_path, "a", "tok", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_replacement_leaves_no_temp_files(tmp_path: Path) -> None:
    for i in range(5):
        files.write_token(tmp_path, "a", f"tok-{i}", 0o600)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert (tmp_path / "a").read_text() == "tok-4"


def test_failed_write_keeps_the_old_token_and_removes_the_temp_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    files.write_token(tmp_path, "a", "old", 0o600)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.write_token(tmp_path, "a", "new", 0o600)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert (tmp_path / "a").read_text() == "old"


def test_concurrent_reader_sees_only_whole_tokens(tmp_path: Path) -> None:
    tokens = {f"{i:04d}" * 300 for i in range(100)}  # 1200-byte tokens, each distinct
    files.write_token(tmp_path, "a", "0000" * 300, 0o600)
    seen: set[str] = set()
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            text = (tmp_path / "a").read_text()
            if text in tokens:
                seen.add(text)
            else:
                bad.append(text[:40])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for tok in sorted(tokens):
            files.write_token(tmp_path, "a", tok, 0o600)
    finally:
        done.set()
        t.join()
    assert bad == [] and len(seen) > 1


def test_remove_token_reports_whether_there_was_one(tmp_path: Path) -> None:
    files.write_token(tmp_path, "a", "tok", 0o600)
    assert files.remove_token(tmp_path, "a") is True
    assert files.remove_token(tmp_path, "a") is False
    assert files.read_token(tmp_path, "a") is None


def test_a_login_uri_percent_encodes_every_part() -> None:
    uri = files.login_uri("jitmesh_login_ab", "p/w@:?#", "db.example", 5432, "orders db", "verify-full")
    assert uri == "postgresql://jitmesh_login_ab:p%2Fw%40%3A%3F%23@db.example:5432/orders%20db?sslmode=verify-full"


def test_a_pgpass_line_escapes_colons_and_backslashes() -> None:
    assert files.pgpass_line("u", "a:b\\c", "h", 5432, "d") == "h:5432:d:u:a\\:b\\\\c\n"


def test_a_login_is_written_as_a_uri_and_a_0600_pgpass_and_removed_together(tmp_path: Path) -> None:
    files.write_login(tmp_path, "orders-db", "postgresql://u:p@h:1/d", "h:1:d:u:p\n", 0o640)
    assert (tmp_path / "orders-db").read_text() == "postgresql://u:p@h:1/d"
    assert stat.S_IMODE((tmp_path / "orders-db.pgpass").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "orders-db").stat().st_mode) == 0o640
    assert files.remove_token(tmp_path, "orders-db")
    assert list(tmp_path.iterdir()) == []
