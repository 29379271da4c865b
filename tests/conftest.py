"""Fixtures live one module per real component under tests/fixtures/ (opa, kube, postgres, ...);
every module there is loaded as a pytest plugin."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
