"""The house: one package named decoupled, sub-packages by role, imports that only run downwards, no cycles, and a
pyproject that lists every package (a forgotten one would be missing from the wheel)."""

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]


def _modules() -> dict[str, Path]:
    """decoupled.* module name -> file, through the pyproject's package-dir mapping."""
    out = {}
    for pkg, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if not any(
                name.startswith(f"{other}.") and other != pkg and other.startswith(pkg) for other in PACKAGE_DIR
            ):
                out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every decoupled module `name` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_package_folder_is_in_the_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert on_disk == listed


@pytest.mark.parametrize(
    "low, high",
    [
        ("decoupled.envs", "decoupled.agents"),
        ("decoupled.envs", "decoupled.runners"),
        ("decoupled.agents", "decoupled.runners"),
        ("decoupled.runners.training", "decoupled.runners.evaluation"),
        ("decoupled.runners.training", "decoupled.runners.bench"),
        ("decoupled.runners.training", "decoupled.runners.cli"),
        ("decoupled.runners.evaluation", "decoupled.runners.bench"),
        ("decoupled.runners.evaluation", "decoupled.runners.cli"),
        ("decoupled.runners.bench", "decoupled.runners.cli"),
    ],
)
def test_imports_run_downwards(low, high):
    bad = [(m, i) for m, imps in GRAPH.items() if m.startswith(low) for i in imps if i.startswith(high)]
    assert not bad, f"{low} must not import {high}: {bad}"


def test_the_runner_knows_no_agents_maths():
    """Agent-specific training steps sit behind the AgentDef (learner hooks), not in the runner."""
    bad = [
        (m, i)
        for m, imps in GRAPH.items()
        if m.startswith("decoupled.runners.training")
        for i in imps
        if i.startswith(("decoupled.agents.nets", "decoupled.agents.ops", "decoupled.agents.impala"))
    ]
    assert not bad, bad


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert len(state) == len(MODULES) > 40
