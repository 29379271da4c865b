"""Subcommands served by the credential agent package: sidecar."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Filled in by the sidecar work (issue 3)."""
