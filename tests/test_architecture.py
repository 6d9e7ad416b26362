"""The package's shape: stage folders, imports that only flow down the pipeline, no cycles, short modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sas_kit"
# The pipeline, upstream first: a module may import its own stage or any stage to its left.
STAGES = ("config", "data", "augment", "models", "experiment", "report", "cli")
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else 0  # sas_kit itself: stage 0


def imports(path: Path, known: set[str]) -> set[str]:
    """Every sas_kit module ``path`` imports, at top level or inside a function (a lazy import is still a
    dependency). ``from pkg import name`` depends on ``pkg`` (its __init__ runs) and on ``pkg.name`` when that
    is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sas_kit")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sas_kit"):
            found.add(node.module)  # importing anything from a package runs its __init__ first
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports(p, known) - {module_name(p)} for p in paths}


def upstream_violations(deps: dict[str, set[str]]) -> list[str]:
    return [f"{m} (stage {STAGES[stage(m)]}) imports {d} (stage {STAGES[stage(d)]})"
            for m, ds in sorted(deps.items()) for d in sorted(ds)
            if stage(d) > stage(m) and not m.endswith("__main__")]


def cycles(deps: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, a package __init__ and its own modules included (``__init__`` imports ``policy``, which
    imports from the package: a cycle that works only while nothing moves)."""
    found, state = [], {}

    def edges(m):
        return sorted(deps.get(m, ()))

    def visit(m, path):
        state[m] = "open"
        for d in edges(m):
            if state.get(d) == "open":
                found.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in deps:
        if m not in state:
            visit(m, [m])
    return found


def test_the_folders_are_the_pipeline_stages():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(STAGES[1:])


def test_imports_only_flow_down_the_pipeline():
    assert upstream_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upstream_import_and_a_cycle():
    deps = {"sas_kit.data.x": {"sas_kit.report.y"}, "sas_kit.report.y": {"sas_kit.data.x"}}
    assert upstream_violations(deps) == ["sas_kit.data.x (stage data) imports sas_kit.report.y (stage report)"]
    assert cycles(deps)
    assert cycles({"sas_kit.augment": {"sas_kit.augment.policy"}, "sas_kit.augment.policy": {"sas_kit.augment"}})


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_short_and_say_what_they_hold(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: split it (one concept per module)"
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"
