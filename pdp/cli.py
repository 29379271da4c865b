"""Subcommands served by the broker package: broker, token, revoke, audit, shadow."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Filled in by the broker work (issue 2)."""
