"""`jitmesh policy test|check|fmt` with the real OPA: every finding is named and exits 1, a
command that cannot run exits 2, a clean directory exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLEAN = "package a\n\nx := 1\n"
UNFORMATTED = "package a\n\ny:=2\n"
UNPARSABLE = "package b\n\nx := [\n"


def policy(opa_bin: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    verb, *rest = args
    return subprocess.run([sys.executable, "-m", "jitmesh.cli", "policy", verb, "--opa-bin", opa_bin, *rest],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_fmt_lists_unformatted_files_and_names_one_that_does_not_parse(opa_bin: str, tmp_path: Path) -> None:
    d = tree(tmp_path / "p", {"a.rego": UNFORMATTED, "b.rego": UNPARSABLE, "c.rego": CLEAN.replace("a", "c")})
    p = policy(opa_bin, "fmt", str(d))
    assert p.returncode == 1
    assert str(d / "a.rego") in p.stdout and "c.rego" not in p.stdout
    assert "b.rego:4: rego_parse_error" in p.stderr and "could not be parsed" in p.stderr
    assert "fmt --write" in p.stderr


def test_fmt_of_a_clean_directory_exits_0(opa_bin: str, tmp_path: Path) -> None:
    p = policy(opa_bin, "fmt", str(tree(tmp_path / "p", {"a.rego": CLEAN})))
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""


def test_fmt_write_rewrites_and_then_the_directory_is_clean(opa_bin: str, tmp_path: Path) -> None:
    d = tree(tmp_path / "p", {"a.rego": UNFORMATTED})
    assert policy(opa_bin, "fmt", "--write", str(d)).returncode == 0
    assert (d / "a.rego").read_text() == "package a\n\ny := 2\n"
    assert policy(opa_bin, "fmt", str(d)).returncode == 0


def test_test_without_any_test_exits_1_saying_so(opa_bin: str, tmp_path: Path) -> None:
    p = policy(opa_bin, "test", str(tree(tmp_path / "p", {"a.rego": CLEAN})))
    assert p.returncode == 1
    assert "no tests found" in p.stderr


def test_test_names_each_failing_test(opa_bin: str, tmp_path: Path) -> None:
    d = tree(tmp_path / "p", {"a.rego": CLEAN, "a_test.rego": "package a_test\n\nimport data.a\n\n"
                              "test_one if a.x == 1\n\ntest_two if a.x == 2\n"})
    p = policy(opa_bin, "test", str(d))
    assert p.returncode == 1
    assert "FAIL data.a_test.test_two" in p.stdout and "test_one" not in p.stdout
    assert "PASS: 1/2" in p.stdout


def test_test_of_passing_tests_exits_0(opa_bin: str, tmp_path: Path) -> None:
    d = tree(tmp_path / "p", {"a.rego": CLEAN, "a_test.rego": "package a_test\n\nimport data.a\n\n"
                              "test_one if a.x == 1\n"})
    p = policy(opa_bin, "test", "-v", str(d))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS data.a_test.test_one" in p.stdout and "PASS: 1/1" in p.stdout


def test_test_of_a_directory_that_does_not_load_exits_1_with_opas_errors(opa_bin: str, tmp_path: Path) -> None:
    p = policy(opa_bin, "test", str(tree(tmp_path / "p", {"b.rego": UNPARSABLE})))
    assert p.returncode == 1
    assert "rego_parse_error" in p.stderr and "could not be loaded" in p.stderr


@pytest.mark.parametrize(("files", "code"), [({"a.rego": CLEAN}, 0), ({"b.rego": UNPARSABLE}, 1)])
def test_check_exits_0_or_1(opa_bin: str, tmp_path: Path, files: dict[str, str], code: int) -> None:
    assert policy(opa_bin, "check", str(tree(tmp_path / "p", files))).returncode == code


def test_a_missing_opa_exits_2(tmp_path: Path) -> None:
    p = policy(str(tmp_path / "no-opa"), "test", str(tmp_path))
    assert p.returncode == 2 and "jitmesh policy test:" in p.stderr


def test_the_shipped_policies_pass_their_tests(opa_bin: str) -> None:
    p = policy(opa_bin, "test", "policies", cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
