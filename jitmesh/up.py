"""`jitmesh up`: the whole system on one machine with embedded defaults."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Filled in by the broker and sidecar work (issues 2 and 3)."""
