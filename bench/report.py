"""What a benchmark section found, and how it is shown: a plain-text table with each
figure beside its baseline, its aim and the previous run, and a JSON document."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Comparison = Literal[">=", ">", "<=", "<"]
SCHEMA_VERSION = 1


def format_number(value: float, unit: str = "") -> str:
    """Few enough digits to read at a glance: 1,234 / 123 / 12.3 / 1.23."""
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100 or value == int(value):
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("/s", "%", "x") else f"{text} {unit}"


@dataclass(frozen=True)
class Aim:
    op: Comparison
    target: float

    def met(self, value: float) -> bool:
        return {">=": value >= self.target, ">": value > self.target,
                "<=": value <= self.target, "<": value < self.target}[self.op]

    def render(self, unit: str) -> str:
        op = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}[self.op]
        return f"{op} {format_number(self.target, unit)}"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    aim: Aim | None = None
    note: str = ""

    def verdict(self) -> str:
        if self.aim is None or self.value is None:
            return ""
        return "ok" if self.aim.met(self.value) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "baseline": self.baseline,
                "baseline_label": self.baseline_label,
                "aim": None if self.aim is None else {"op": self.aim.op, "target": self.aim.target},
                "verdict": self.verdict(), "note": self.note}


@dataclass
class SectionResult:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "unavailable": self.unavailable,
                "figures": [f.as_dict() for f in self.figures], "notes": list(self.notes), "raw": self.raw}


def unavailable(key: str, title: str, reason: str) -> SectionResult:
    return SectionResult(key=key, title=title, unavailable=reason)


def _cells(fig: Figure, previous: Mapping[str, float]) -> list[str]:
    measured = "-" if fig.value is None else format_number(fig.value, fig.unit)
    baseline = ""
    if fig.baseline is not None:
        baseline = format_number(fig.baseline, fig.unit)
        if fig.baseline_label:
            baseline += f" ({fig.baseline_label})"
    aim = "" if fig.aim is None else fig.aim.render(fig.unit)
    prev = previous.get(fig.name)
    last = "" if prev is None else format_number(prev, fig.unit)
    return [f"  {fig.name}", measured, baseline, aim, fig.verdict(), last, fig.note]


HEADER = ["figure", "measured", "baseline", "aim", "", "last run", "note"]


def render_table(sections: Sequence[SectionResult],
                 previous: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """One table for all sections; a section that could not run shows its reason instead of figures."""
    previous = previous or {}
    rows: list[list[str] | str] = []
    for sec in sections:
        rows.append(sec.title)
        if sec.unavailable is not None:
            rows.append(f"  not available: {sec.unavailable}")
            continue
        rows.extend(_cells(fig, previous.get(sec.key, {})) for fig in sec.figures)
        rows.extend(f"  · {note}" for note in sec.notes)
    table_rows = [r for r in rows if isinstance(r, list)]
    # the trailing note column is not padded, so it never widens the table
    widths = [max([len(HEADER[i])] + [len(r[i]) for r in table_rows]) for i in range(len(HEADER) - 1)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) if i in (1, 2, 3) else c.ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join([*padded, *cells[len(widths):]]).rstrip()

    out = [line(HEADER), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    for r in rows:
        out.append(line(r) if isinstance(r, list) else r)
    return "\n".join(out)


def results_document(sections: Sequence[SectionResult], machine: Mapping[str, Any]) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": dict(machine), "sections": [s.as_dict() for s in sections]}


def previous_figures(doc: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """section key -> figure name -> value, from an earlier results document."""
    out: dict[str, dict[str, float]] = {}
    for sec in doc.get("sections", []):
        figs = {f["name"]: float(f["value"]) for f in sec.get("figures", []) if f.get("value") is not None}
        if figs:
            out[sec["key"]] = figs
    return out


def load_previous(results_dir: Path) -> dict[str, dict[str, float]]:
    """Figures of the latest run that measured each section, so a run of one section
    still shows the others' last figures when compared."""
    merged: dict[str, dict[str, float]] = {}
    for path in sorted(results_dir.glob("bench-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        merged.update(previous_figures(doc))
    return merged
