"""Calling the benchmarks other modules own (bench/sidecar_bench.py, bench/injector_bench.py)
through their `run(...) -> dict`, and turning the numbers they return into figures."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from bench.report import Aim, Figure

# name suffix -> (unit, factor applied to the value)
UNITS: tuple[tuple[str, str, float], ...] = (
    ("_ms", "ms", 1.0), ("_s", "s", 1.0), ("_seconds", "s", 1.0), ("_mb", "MB", 1.0), ("_mib", "MB", 1.0),
    ("_bytes", "MB", 1 / 1e6), ("_kb", "kB", 1.0), ("_pct", "%", 1.0), ("_percent", "%", 1.0),
    ("_per_s", "/s", 1.0), ("_per_second", "/s", 1.0),
)


def load_run(module: str) -> Callable[..., Any] | str:
    """The module's `run`, or why there is none."""
    path = module.replace(".", "/") + ".py"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return f"{path} does not exist yet"
        return f"{path} cannot be imported: {exc}"
    except Exception as exc:
        return f"{path} cannot be imported: {type(exc).__name__}: {exc}"
    run = getattr(mod, "run", None)
    if not callable(run):
        return f"{path} has no run() function"
    return run


def call_with(run: Callable[..., Any], offered: Mapping[str, Any]) -> Any:
    """Call `run` with those of `offered` it names (or all when it takes **kwargs)."""
    params = inspect.signature(run).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return run(**offered)
    return run(**{k: v for k, v in offered.items() if k in params})


def label(key: str) -> tuple[str, str, float]:
    """`idle_cpu_pct` -> ("idle cpu", "%", 1.0)."""
    for suffix, unit, factor in UNITS:
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("_", " "), unit, factor
    return key.replace("_", " "), "", 1.0


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, keyed `outer_inner`."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(flatten(value, name + "_"))
    return out


def figures_from(doc: Mapping[str, Any], aims: Mapping[str, Aim]) -> list[Figure]:
    """A figure per number `run()` returned, with the aim of a known key beside it."""
    figures = []
    for key, value in flatten(doc).items():
        name, unit, factor = label(key)
        figures.append(Figure(name, value * factor, unit, aim=aims.get(key)))
    return figures
