"""The layering rules of docs/architecture.md, read from the source (ast, no imports run).

* ``ztun`` never imports ``harness`` (the harness depends on ztun, not the reverse);
* no import cycle among the modules of ``ztun/``, nor among those of ``harness/``.

An import inside a function counts as much as one at module level: it runs later, but it
is still a dependency, and two modules that import each other -- one of them lazily -- are
one tangled module (which of them loads first decides what the other sees).  Only the
imports under ``if TYPE_CHECKING:`` do not count: they never run.  An import names the
module it loads: ``from . import x`` is the submodule ``x`` when there is one, else the
package; the parent packages an import also runs are not edges (``pkg/__init__``
importing its own submodules, which import siblings through ``pkg``, is how packages
work).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator, Mapping
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


def runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `node` that can run: at module level, in functions and
    classes, under if/try/with -- all but those under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: Iterable[ast.AST] = node.orelse
    else:
        children = ast.iter_child_nodes(node)
    for child in children:
        yield from runtime_imports(child)


def targets(name: str, path: Path, known: set[str], node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules one import statement of module `name` (at `path`) loads, as dotted
    names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        base = name.split(".")
        base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    found: set[str] = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.add(submodule if submodule in known else source)
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The modules `name` (at `path`) may load, each with the line of its first import."""
    found: dict[str, int] = {}
    for node in runtime_imports(parsed(path)):
        for target in targets(name, path, known, node):
            found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(package: str) -> dict[str, dict[str, int]]:
    """Module -> the modules of the same package it imports (and on which line)."""
    files = module_files(package)
    known = set(files)
    return {
        name: {
            m: line
            for m, line in imported_modules(name, path, known).items()
            if m in known and m != name
        }
        for name, path in files.items()
    }


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
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


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """The edges inside one cycle: ``a:LINE -> b``, one per line."""
    members = set(component)
    return "\n".join(
        f"  {a}:{graph[a][b]} -> {b}" for a in component for b in sorted(graph[a].keys() & members)
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 10  # the walk found the package's modules
    found = cycles(graph)
    assert not found, "import cycles (lazy imports in functions count too):\n" + "\n".join(
        describe(c, graph) for c in found
    )


def imports_anywhere(package: str) -> Iterator[tuple[str, int, str]]:
    """(module, line, imported module) for every import in `package`, also in functions
    and under ``if TYPE_CHECKING:``."""
    files = module_files(package)
    known = set(files)
    for name, path in files.items():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in targets(name, path, known, node):
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
    inside a package's __init__ resolves to the sibling module; an import inside a
    function or a class counts, one under ``if TYPE_CHECKING:`` (at any depth) does not,
    its ``else:`` does."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    init = tmp_path / "__init__.py"
    init.write_text(
        "import typing\n"
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "if TYPE_CHECKING:\n    from . import d\n"
        "def later():\n    from . import e\n"
        "    if typing.TYPE_CHECKING:\n        from . import f\n"
        "    else:\n        from . import g\n"
        "class Lazy:\n    def load(self):\n        from .h import thing\n"
    )
    known = {"p", "p.b", "p.c", "p.d", "p.e", "p.f", "p.g", "p.h"}
    assert imported_modules("p", init, known) == {
        "typing": 1,
        "p.b": 3,
        "p.c": 4,
        "p.e": 8,
        "p.g": 12,
        "p.h": 15,
    }


def test_a_lazy_import_back_is_a_cycle(tmp_path: Path) -> None:
    """Two modules where one imports the other inside a function are a cycle, named
    with the line of each import."""
    package = tmp_path / "p"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from p.b import B\n")
    (package / "b.py").write_text("class B:\n    def a(self):\n        from p import a\n")
    known = {"p", "p.a", "p.b"}
    graph = {
        name: {m: line for m, line in imported_modules(name, path, known).items() if m in known}
        for name, path in (("p.a", package / "a.py"), ("p.b", package / "b.py"))
    }
    found = cycles(graph)
    assert found == [["p.a", "p.b"]]
    assert describe(found[0], graph) == "  p.a:1 -> p.b\n  p.b:3 -> p.a"
