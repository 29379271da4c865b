"""Subcommands served by the admission webhook package: injector, certs."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Filled in by the injector work (issue 4)."""
