"""The layering rules of docs/architecture.md, read from the source (ast, no imports run).

* ``ztun`` never imports ``harness`` (the harness depends on ztun, not the reverse);
* no import cycle among the modules of ``ztun/``, nor among those of ``harness/``.

Only module-level imports count: the statements a module runs when it is imported
(also under a module-level ``if``/``try``), not those inside functions, which run later,
nor those under ``if TYPE_CHECKING:``, which never run. An import names the module it
loads: ``from . import x`` is the submodule ``x`` when there is one, else the package;
the parent packages an import also runs are not edges (``pkg/__init__`` importing its
own submodules, which import siblings through ``pkg``, is how packages work).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ztun", "harness")


def module_files(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package`."""
    modules: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time (module body, its if/try/with blocks)."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                pending.extend(block)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, ast.With):
            pending.extend(node.body)


def imported_modules(
    name: str, path: Path, known: set[str], tree: ast.Module | None = None
) -> set[str]:
    """The modules `name` (at `path`) loads when imported, as dotted names (or those
    the statements of `tree` load, when given)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = tree if tree is not None else parsed(path)
    for node in module_level_imports(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = name.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            found.add(submodule if submodule in known else source)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports at module level."""
    files = module_files(package)
    known = set(files)
    return {
        name: {m for m in imported_modules(name, path, known) if m in known and m != name}
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "; ".join(edges)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 10  # the walk found the package's modules
    found = cycles(graph)
    assert not found, "import cycles (module level):\n" + "\n".join(
        describe(c, graph) for c in found
    )


def imports_anywhere(package: str) -> Iterator[tuple[str, int, str]]:
    """(module, line, imported module) for every import in `package`, also in functions."""
    files = module_files(package)
    known = set(files)
    for name, path in files.items():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module = ast.Module(body=[node], type_ignores=[])
                for target in imported_modules(name, path, known, module):
                    yield name, node.lineno, target


def test_ztun_never_imports_harness() -> None:
    """Anywhere in ztun, also inside functions: the product runs without the harness."""
    offenders = [
        f"{name}:{line} imports {target}"
        for name, line, target in imports_anywhere("ztun")
        if target == "harness" or target.startswith("harness.")
    ]
    assert not offenders, "\n".join(offenders)


def test_nothing_below_the_app_imports_it() -> None:
    """ztun.app runs `ztun run`; only the command line above it may import it (also
    inside functions: a lazy import is still a dependency, e.g. workers on app)."""
    above = {"ztun.cli", "ztun.__main__"}
    offenders = [
        f"{name}:{line}"
        for name, line, target in imports_anywhere("ztun")
        if target == "ztun.app" and name not in above
    ]
    assert not offenders, f"ztun.app imported from below it: {offenders}"


def test_the_cycle_finder_sees_a_cycle_and_a_package_relative_import(tmp_path: Path) -> None:
    """The checker itself: a three-module cycle is one component; `from . import b`
    inside a package's __init__ resolves to the sibling module."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    init = tmp_path / "__init__.py"
    init.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n    from . import d\n"
        "def later():\n    from . import e\n"
    )
    known = {"p", "p.b", "p.c", "p.d", "p.e"}
    assert imported_modules("p", init, known) == {"typing", "p.b", "p.c"}
