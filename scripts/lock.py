"""Write requirements.lock: every runtime dependency of pyproject.toml, pinned, as pip resolves
them today for CPython 3.11 on Linux. Both images install from it (image/build.sh, Dockerfile).

    python3 scripts/lock.py      (make lock)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
# Runtime dependencies of jitmesh, pinned: written by `make lock` (scripts/lock.py) from
# pyproject.toml. image/build.sh and Dockerfile both install exactly these.
"""


def resolve() -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        report = Path(tmp) / "report.json"
        subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", "--dry-run",
                        "--ignore-installed", "--report", str(report), str(REPO)], check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {(i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in installs}
    return sorted(p for p in pins if p[0] != "jitmesh")


def main() -> int:
    lines = [f"{name}=={version}" for name, version in resolve()]
    (REPO / "requirements.lock").write_text(HEADER + "\n".join(lines) + "\n")
    print(f"requirements.lock: {len(lines)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
