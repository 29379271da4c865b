"""The project's modules import each other without a cycle, counting imports made only for
type checking and imports inside functions: each package's layer stays below the ones that
use it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("jitmesh", "pdp", "injector", "sidecar", "proxy", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `name` names in an import statement, anywhere in the file.
    `from a import b` is an edge to `a.b` when that is a module, else to `a`."""
    is_package = path.name == "__init__.py"
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    edges.add(target)
                elif base in modules:
                    edges.add(base)
    edges.discard(name)
    return edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_sees_a_cycle_through_type_checking_imports(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_of_reads_type_checking_and_function_level_imports(tmp_path: Path) -> None:
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pdp.app import create_app\n"
              "def f():\n    from pdp import config\n")
    path = ROOT / "pdp" / "decision.py"
    modules = {"pdp.app": path, "pdp.config": path, "pdp": path, "pdp.decision": path}
    tree_path = tmp_path / "m.py"
    tree_path.write_text(source)
    assert imports_of("pdp.decision", tree_path, modules) == {"pdp.app", "pdp.config"}


def test_the_project_has_no_import_cycle() -> None:
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (each line one set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


STALE = re.compile(r"\bissue \d+\b|\bSPEC section\b|\bticket #?\d+", re.IGNORECASE)


def test_every_module_opens_with_a_docstring() -> None:
    missing = [str(p.relative_to(ROOT)) for p in project_modules().values()
               if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without an opening docstring: {missing}"


def test_no_module_cites_an_issue_or_a_spec_section_outside_the_repository() -> None:
    cited = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for p in project_modules().values()
             for n, line in enumerate(p.read_text().splitlines(), 1) if STALE.search(line)]
    assert not cited, "name the contract by its topic or cite docs/contract.md:\n" + "\n".join(cited)


def test_no_flat_feature_modules_left_at_the_top_of_pdp() -> None:
    flat = sorted(p.name for p in (ROOT / "pdp").glob("*.py")
                  if p.name.startswith(("shadow_", "revocation_", "approvals_", "admin_")))
    assert not flat, f"move these into their capability package: {flat}"
