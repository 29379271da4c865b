"""The two recipes of the jitmesh image, `Dockerfile` (for a container engine) and
`image/build.sh` (`make image`, without one), install the same thing the same way."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
BUILD = (REPO / "image" / "build.sh").read_text()


def _build_var(name: str) -> str:
    m = re.search(rf'^{name}="([^"$]*)"', BUILD, flags=re.M)
    assert m, f"image/build.sh sets no {name}"
    return m.group(1)


def _docker(instruction: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(instruction + " ")]


def test_both_install_the_dependencies_from_the_one_lock() -> None:
    lock = _build_var("LOCK")
    assert lock == "requirements.lock" and (REPO / lock).is_file()
    assert f"pip install --no-cache-dir -r {lock}" in _docker("RUN")
    assert "-r \"/tmp/wheels/$LOCK\"" in BUILD


def test_both_install_the_project_without_resolving_anything_else() -> None:
    assert any("--no-deps ." in run for run in _docker("RUN"))
    assert re.search(r"--no-index --no-deps \\\n\s+\"/tmp/wheels/\$project_wheel\"", BUILD)


def test_both_have_the_same_entrypoint() -> None:
    assert json.loads(_docker("ENTRYPOINT")[-1]) == [_build_var("ENTRYPOINT")]
    assert '--config.entrypoint "$ENTRYPOINT"' in BUILD


def test_both_run_as_the_same_non_root_user() -> None:
    user = _build_var("IMAGE_USER")
    assert _docker("USER")[-1] == user
    assert not user.startswith("0:") and user.split(":")[0] != "0"
    assert '--config.user "$IMAGE_USER"' in BUILD


def test_both_run_python_3_11_as_the_lock_was_resolved_for() -> None:
    assert _docker("FROM")[0].startswith("python:3.11")
    assert _build_var("DEBIAN_SUITE") == "bookworm"  # Debian 12's python3 is 3.11
    assert "--python-version 3.11" in BUILD


def test_the_lock_pins_every_runtime_dependency_of_pyproject() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    pins = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    assert names <= set(pins), f"not in requirements.lock (run `make lock`): {sorted(names - set(pins))}"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", v) for v in pins.values())


def test_both_ship_the_pinned_opa_where_the_chart_points_the_broker() -> None:
    opa_version = re.search(r'^OPA_VERSION="?v?([0-9.]+)', (REPO / "scripts" / "tools.sh").read_text(), re.M)
    assert opa_version, "scripts/tools.sh pins no OPA_VERSION"
    in_image = _build_var("OPA_IN_IMAGE")
    assert 'install -m 0755 "$("$TOOLS" path opa)" "$rootfs$OPA_IN_IMAGE"' in BUILD
    assert f"--from=openpolicyagent/opa:{opa_version.group(1)}-static /opa {in_image}" in _docker("COPY")
    values = yaml.safe_load((REPO / "charts" / "jitmesh" / "values.yaml").read_text())
    assert values["broker"]["accessPolicy"]["opaBin"] == in_image


def test_both_install_every_package_of_the_project() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in (p.rstrip("*") for p in packages["include"]):
        assert f"{package} ./{package}" in _docker("COPY"), f"the Dockerfile leaves out {package}/"
        assert re.search(rf"find [a-z ]*\b{package}\b[a-z ]* -name '\*\.py'", BUILD), \
            f"image/build.sh does not rebuild when {package}/ changes"
