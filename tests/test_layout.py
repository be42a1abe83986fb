"""The project's layout: no import cycle among its modules, ``maae`` never imports ``study``, and the modules
that Ray's processes unpickle stay light.

The import graph is read from the source with the standard library's ``ast``: every ``import`` and
``from ... import`` counts, at module level or inside a function (a function-level import still ties the two
modules together, it only delays it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maae", "study")


def module_files() -> dict[str, Path]:
    """Every importable module of the project's packages: dotted name -> file.

    A file ``x.py`` beside a package ``x/`` (``study/report.py`` beside ``study/report/``) is a script: Python
    imports the package under that name, so the script is no node of the graph.
    """
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            elif (path.parent / parts[-1] / "__init__.py").is_file():
                continue
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imported_modules(name: str, modules: dict[str, Path]) -> set[str]:
    """The project's modules that module ``name`` imports anywhere in its source."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a import b``: b is a submodule of a, or a name defined in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name: the deepest module it names
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, modules) for name in modules}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(_closed_path(sorted(component), graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _closed_path(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module, as ``[a, b, ..., a]`` (breadth-first, shortest)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    return component


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "study.tune.trial_worker" in graph["study.tune.train_loop"]  # imported inside a function
    assert "study.protocol" in graph["study.results"]
    assert "study.report" in graph and "study.report.load" in graph["study.report"]


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycle_among_the_project_modules() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_maae_never_imports_study() -> None:
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "study")
                 for name, targets in graph.items() if name.split(".")[0] == "maae"}
    assert not {name: targets for name, targets in offenders.items() if targets}


@pytest.mark.parametrize(("module", "heavy"), [
    ("study.protocol", ("ray", "torch", "pandas", "sklearn")),
    ("study.tune.train_loop", ("ray", "torch", "pandas", "sklearn")),
    ("study.space", ("ray", "torch", "pandas", "sklearn", "optuna")),
])
def test_modules_that_ray_unpickles_or_the_command_line_reads_first_stay_light(module: str,
                                                                                heavy: tuple[str, ...]) -> None:
    probe = (f"import sys, {module}; "
             f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"
