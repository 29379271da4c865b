"""What one `python -m bench` run hands each section: its options, a scratch directory,
progress output, and figures one section measured for another."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Options:
    duration: float = 10.0
    warmup: float = 3.0
    connections: int = 32
    sidecars: int = 100
    keep: bool = False


@dataclass
class Context:
    """What one `python -m bench` run shares between sections: options, a scratch
    directory, and figures one section measured that another compares against."""

    options: Options
    workdir: Path
    shared: dict[str, Any] = field(default_factory=dict)

    def say(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def ticker(self, label: str, total: float) -> Callable[[float], None]:
        """Progress for a timed run: a countdown on a terminal, silence otherwise."""
        if not sys.stderr.isatty():
            return lambda elapsed: None

        def tick(elapsed: float) -> None:
            end = "\n" if elapsed >= total else ""
            print(f"\r[bench]   {label} {min(elapsed, total):4.0f}/{total:.0f} s", end=end, file=sys.stderr,
                  flush=True)
        return tick
