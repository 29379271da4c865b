"""The shadow report: a JSON document built from stored counts and samples, and its
three renderings (table, JSON, Markdown). Pure functions; the broker builds the
document at `GET /v1/admin/shadow/report`, `jitmesh shadow replay` builds it from its
own tally, and `jitmesh shadow report` / `replay` render it.

Document, `schema_version` 1:

    {"schema_version": 1, "source": "live" | "replay",
     "window": {"since": RFC3339 | null, "until": RFC3339},
     "enforced_policy": str | null, "candidate_policy": str | null,
     "requests_seen": int, "comparisons": int, "agreement_rate": float | null,
     "classes": {class: int for every class},
     "matrix": {enforced verdict: {candidate verdict: int}},   # allow|deny x allow|deny|error
     "top": {class: {"subjects": [{"name", "count"}], "audiences": [{"name", "count"}]}},
     "samples": {class: [{"decision_id", "time", "subject", "audience", "candidate_error"?}]},
     "verdict": {"status": "no_data" | "findings" | "changes" | "agrees", "text": str}}

`requests_seen - comparisons` is the requests whose enforced decision never came
(OPA unreachable), so there was nothing to compare.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pdp import when
from pdp.shadow.classify import CANDIDATE_VERDICTS, ENFORCED_VERDICTS, NOT_COMPARED, SHADOW_CLASSES, ShadowClass
from pdp.store.shadow import ShadowCount, ShadowSample

SCHEMA_VERSION: Final = 1
FORMATS: Final = ("table", "json", "markdown")
FINDING_CLASSES: Final[tuple[ShadowClass, ...]] = ("deny_to_allow", "candidate_error")
CHANGE_CLASSES: Final[tuple[ShadowClass, ...]] = ("allow_to_deny", "narrower", "wider")
DEFAULT_TOP_K: Final = 5


class ReportArgumentError(ValueError):
    """A report argument (window, format, classes) that cannot be used, with what would be right."""


rfc3339 = when.rfc3339


def parse_time(text: str, what: str = "--since") -> float:
    """An RFC 3339 time (`2026-11-22T10:00:00Z`, or with an offset) or a duration -> unix seconds."""
    try:
        return when.parse_when(text, what, time.time(), unix_seconds=False)
    except when.WhenError as exc:
        raise ReportArgumentError(str(exc)) from None


def parse_since(text: str, now: float) -> float:
    """`--since`: a duration back from now (`90s`, `15m`, `2h`, `7d`, `1h30m`) or an RFC 3339
    time -> unix seconds. A time in the future or a zero duration is an error."""
    try:
        return when.parse_since(text, "--since", now, unix_seconds=False)
    except when.WhenError as exc:
        raise ReportArgumentError(str(exc)) from None


def parse_fail_on(text: str) -> tuple[ShadowClass, ...]:
    """`--fail-on deny_to_allow,candidate_error` -> the classes, each checked."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ReportArgumentError(f"--fail-on {text!r}: name at least one class of {', '.join(SHADOW_CLASSES)}")
    unknown = [n for n in names if n not in SHADOW_CLASSES]
    if unknown:
        raise ReportArgumentError(
            f"--fail-on: unknown class {', '.join(repr(u) for u in unknown)}; "
            f"expected a comma-separated list of {', '.join(SHADOW_CLASSES)}")
    return tuple(c for c in SHADOW_CLASSES if c in names)


def parse_format(text: str) -> str:
    if text not in FORMATS:
        raise ReportArgumentError(f"--format {text!r}: expected one of {', '.join(FORMATS)}")
    return text


def _top(counter: Counter[str], k: int) -> list[dict[str, Any]]:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [{"name": name, "count": n} for name, n in ranked]


def verdict(classes: Mapping[str, int], comparisons: int) -> dict[str, str]:
    """One line a pipeline and a human can both act on."""
    if comparisons == 0:
        return {"status": "no_data", "text": "NO DATA: no comparisons in this window; nothing to judge yet"}
    findings = [f"{classes[c]} {c}" for c in FINDING_CLASSES if classes[c]]
    changes = [f"{classes[c]} {c}" for c in CHANGE_CLASSES if classes[c]]
    if findings:
        text = "DO NOT PROMOTE: " + ", ".join(findings)
        if classes["deny_to_allow"]:
            text += " (deny_to_allow is a security finding: the candidate would issue what is denied today)"
        if changes:
            text += "; also " + ", ".join(changes)
        return {"status": "findings", "text": text}
    changed = sum(classes[c] for c in CHANGE_CLASSES)
    if changes:
        return {"status": "changes",
                "text": f"REVIEW BEFORE PROMOTING: the candidate changes {changed} of {comparisons} decisions "
                        f"({', '.join(changes)}); no deny_to_allow, no candidate_error"}
    return {"status": "agrees", "text": f"AGREES: the candidate decides all {comparisons} requests as enforced"}


def build_report(counts: Iterable[ShadowCount], samples: Iterable[ShadowSample], *, source: str,
                 since: float | None, until: float, enforced_policy: str | None, candidate_policy: str | None,
                 top_k: int = DEFAULT_TOP_K, samples_per_class: int = 5) -> dict[str, Any]:
    """The report document (schema above) from counts and samples of one window."""
    classes: dict[str, int] = dict.fromkeys(SHADOW_CLASSES, 0)
    matrix: dict[str, dict[str, int]] = {e: dict.fromkeys(CANDIDATE_VERDICTS, 0) for e in ENFORCED_VERDICTS}
    subjects: dict[str, Counter[str]] = {c: Counter() for c in SHADOW_CLASSES}
    audiences: dict[str, Counter[str]] = {c: Counter() for c in SHADOW_CLASSES}
    not_compared = 0
    for row in counts:
        if row.shadow_class == NOT_COMPARED:
            not_compared += row.count
            continue
        if row.shadow_class not in classes:
            continue  # a class a newer broker wrote; this report does not know it
        classes[row.shadow_class] += row.count
        if row.enforced in matrix and row.candidate in matrix[row.enforced]:
            matrix[row.enforced][row.candidate] += row.count
        subjects[row.shadow_class][row.subject] += row.count
        audiences[row.shadow_class][row.audience] += row.count
    comparisons = sum(classes.values())

    by_class: dict[str, list[ShadowSample]] = {}
    for s in sorted(samples, key=lambda s: (-s.time, s.decision_id)):
        kept = by_class.setdefault(s.shadow_class, [])
        if s.shadow_class in classes and len(kept) < samples_per_class:
            kept.append(s)

    def sample_doc(s: ShadowSample) -> dict[str, Any]:
        doc: dict[str, Any] = {"decision_id": s.decision_id, "time": rfc3339(s.time), "subject": s.subject,
                               "audience": s.audience}
        if s.candidate_error:
            doc["candidate_error"] = s.candidate_error
        return doc

    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "window": {"since": None if since is None else rfc3339(since), "until": rfc3339(until)},
        "enforced_policy": enforced_policy,
        "candidate_policy": candidate_policy,
        "requests_seen": comparisons + not_compared,
        "comparisons": comparisons,
        "agreement_rate": round(classes["agree"] / comparisons, 4) if comparisons else None,
        "classes": classes,
        "matrix": matrix,
        "top": {c: {"subjects": _top(subjects[c], top_k), "audiences": _top(audiences[c], top_k)}
                for c in SHADOW_CLASSES if classes[c]},
        "samples": {c: [sample_doc(s) for s in by_class.get(c, [])] for c in SHADOW_CLASSES if classes[c]},
        "verdict": verdict(classes, comparisons),
    }


def check_report(doc: object) -> dict[str, Any]:
    """A report document received from elsewhere (the broker), checked before rendering."""
    if not isinstance(doc, dict):
        raise ReportArgumentError(f"the shadow report is not a JSON object: {str(doc)[:200]}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportArgumentError(
            f"the shadow report has schema_version {version!r}; this jitmesh reads version {SCHEMA_VERSION}")
    missing = [k for k in ("requests_seen", "comparisons", "classes", "matrix", "top", "samples", "verdict", "window")
               if k not in doc]
    if missing:
        raise ReportArgumentError(f"the shadow report lacks {', '.join(missing)}")
    return doc


def failed_classes(doc: Mapping[str, Any], fail_on: Iterable[str]) -> list[str]:
    """The `--fail-on` classes that occurred in the report."""
    classes = doc.get("classes", {})
    return [c for c in fail_on if classes.get(c, 0) > 0]


# --- rendering -----------------------------------------------------------------------------

def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def _rate(doc: Mapping[str, Any]) -> str:
    rate = doc.get("agreement_rate")
    return "-" if rate is None else f"{100.0 * rate:.1f}%"


def _names(entries: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['name'] or '(none)'} ({e['count']})" for e in entries) or "-"


def _title(doc: Mapping[str, Any]) -> str:
    return (f"Shadow report ({doc.get('source')}): enforced {doc.get('enforced_policy') or '-'} "
            f"vs candidate {doc.get('candidate_policy') or '-'}")


def _window(doc: Mapping[str, Any]) -> str:
    w = doc["window"]
    return f"{w.get('since') or 'beginning'} .. {w.get('until')}"


def _not_compared(doc: Mapping[str, Any]) -> list[str]:
    missing = doc["requests_seen"] - doc["comparisons"]
    return [f"Not compared: {missing} (the enforced decision never came: OPA unreachable)"] if missing else []


def render_table(doc: Mapping[str, Any]) -> str:
    total = doc["comparisons"]
    lines = [
        _title(doc),
        f"Window: {_window(doc)}",
        f"Requests seen: {doc['requests_seen']}   Comparisons: {total}   Agreement: {_rate(doc)}",
        *_not_compared(doc),
        "",
        f"{'class':<17}{'count':>8}{'share':>9}",
    ]
    lines += [f"{c:<17}{doc['classes'].get(c, 0):>8}{_pct(doc['classes'].get(c, 0), total):>9}"
              for c in SHADOW_CLASSES]
    lines += ["", "enforced \\ candidate" + "".join(f"{v:>8}" for v in CANDIDATE_VERDICTS)]
    lines += [f"{e:<20}" + "".join(f"{doc['matrix'][e].get(v, 0):>8}" for v in CANDIDATE_VERDICTS)
              for e in ENFORCED_VERDICTS]
    for c in SHADOW_CLASSES:
        if c not in doc["top"]:
            continue
        lines += ["", f"{c} ({doc['classes'][c]})",
                  f"  subjects:  {_names(doc['top'][c]['subjects'])}",
                  f"  audiences: {_names(doc['top'][c]['audiences'])}",
                  f"  samples:   {', '.join(s['decision_id'] for s in doc['samples'].get(c, [])) or '-'}"]
        lines += [f"  error:     {s['decision_id']}: {s['candidate_error']}"
                  for s in doc["samples"].get(c, []) if s.get("candidate_error")][:3]
    lines += ["", f"VERDICT: {doc['verdict']['text']}"]
    return "\n".join(lines) + "\n"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(doc: Mapping[str, Any]) -> str:
    total = doc["comparisons"]
    lines = [
        f"## {_md(_title(doc))}",
        "",
        f"**Verdict: {_md(doc['verdict']['text'])}**",
        "",
        f"- Window: {_window(doc)}",
        f"- Requests seen: {doc['requests_seen']}",
        f"- Comparisons: {total}",
        *[f"- {line}" for line in _not_compared(doc)],
        f"- Agreement: {_rate(doc)}",
        "",
        "| class | count | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{c}` | {doc['classes'].get(c, 0)} | {_pct(doc['classes'].get(c, 0), total)} |"
              for c in SHADOW_CLASSES]
    lines += ["", "| enforced \\ candidate | " + " | ".join(CANDIDATE_VERDICTS) + " |",
              "|---|" + "---:|" * len(CANDIDATE_VERDICTS)]
    lines += [f"| {e} | " + " | ".join(str(doc["matrix"][e].get(v, 0)) for v in CANDIDATE_VERDICTS) + " |"
              for e in ENFORCED_VERDICTS]
    if doc["top"]:
        lines += ["", "| class | top subjects | top audiences | sample decision ids |", "|---|---|---|---|"]
        for c in SHADOW_CLASSES:
            if c in doc["top"]:
                ids = ", ".join(f"`{s['decision_id']}`" for s in doc["samples"].get(c, [])) or "-"
                lines.append(f"| `{c}` | {_md(_names(doc['top'][c]['subjects']))} | "
                             f"{_md(_names(doc['top'][c]['audiences']))} | {_md(ids)} |")
    return "\n".join(lines) + "\n"


def render(doc: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return render_markdown(doc)
    if fmt == "table":
        return render_table(doc)
    raise ReportArgumentError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
