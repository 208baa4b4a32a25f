"""Every program ztun, its harness and its tests start is in ``ztun.tools``, and is installed.

A fresh machine has only what ``dev.sh`` installs; a program the code starts that no list
installs passes on a developer's machine and fails on a user's (it happened with
iptables).  This module reads the sources with :mod:`ast` (nothing is run, no root) and
fails on any of these, with ``path:line`` and what to write instead:

1. **argv lists.**  A list or tuple is an argv when it is

   * an argument of a spawn-like call (callee named one of :data:`SPAWNERS`, e.g.
     ``host.run``, ``subprocess.Popen``, ``run_local``; ``shlex.join``), or of a function
     of the same module whose parameter there is named like an argv (below);
   * assigned (``=``, not ``+=``, which extends one) to a name ending in ``argv``,
     ``cmd``, ``command`` or ``prefix`` (or a list or dict of such, named
     ``...argvs``/``...commands``), returned by a function so named, or appended to
     ``undo``;
   * the left operand of ``+`` or a branch of ``... if ... else ...`` that is an argv;
   * the arguments a call gives a function of the same module from the position of its
     ``*argv`` parameter on, when that function hands ``argv`` to a spawn-like call
     (``def _run(host, *argv): host.run(list(argv))``; ``_run(h, tool("ip"), ...)``);
   * assigned to a name that is then passed to a spawn-like call, appended to ``undo``
     or starred first into an argv (``run(cmd)``, ``undo.append(cmd)``,
     ``[*prefix, ...]``: followed to its assignments, or, for a loop variable, to the
     collection it loops over: ``for argv in ARGVS``, ``for k, argv in VIEWS.items()``);
   * anywhere, a literal list whose first element is a registered program's name and
     whose second is an option or starred (``["ping", "-c", "1"]``).

   Its first element must be ``tool("x")`` (``guest_tool("x")`` for a command run inside
   the VM guest) with ``x`` registered, or a runtime value (a path, ``sys.executable``);
   a string literal there is a finding (one starting with ``-`` is an option list, no
   program).  The program after a wrapper is checked the same way:
   ``ip netns exec NS prog``, ``timeout [-k N] DUR prog``, ``env [K=V...] prog``,
   ``setsid``/``nsenter``/``unshare [options] prog``, and ``sh -c SCRIPT`` (item 2).
2. **sh -c scripts.**  The argument after ``sh -c`` in an argv: a string, an f-string, a
   sum of them, or a name or call of this module that evaluates to one (followed to the
   assignments of that name in its function, or the returns of that function).
   Each command word (the start of the script, after ``; && || | & ( { !``, ``then``,
   ``do``...; wrappers as above) must be a dash builtin (``echo``, ``kill``, ``test``...),
   a runtime value (``$1``, ``{binary}``) or ``{tool("x")}`` in an f-string.  Not
   followed: what a placeholder holds, and scripts inside quotes (``sh -c '...'``).
3. **Lookups by name.**  ``shutil.which("x")`` is a finding (use ``ztun.tools.which`` or
   ``shutil.which(tool("x"))``);
   a literal name given to ``require_tool``/``have_tool``/``which``/``missing``, or listed
   in a collection named ``...tools``, must be registered.
4. **Tool-name constants.**  An UPPER_CASE constant holding a string that is a registered
   name, or named ``..._BINARY``/``_BIN``/``_EXE``/``_EXECUTABLE``/``_PROGRAM``/``_TOOL``,
   must be ``tool("x")``.
5. **tool("x") itself.**  ``x`` must be registered (``TOOLS``, ``GUEST_TOOLS`` for
   ``guest_tool``), and a literal: the check cannot see a computed name (except inside
   the lookup helpers of item 3, whose callers' literals are checked).

Then the registry against its installers: an ``APT``/``VM``/``VAGRANT`` tool's package is
in that ``dev.sh`` array, a ``PYPI`` distribution is in a pyproject extra that ``dev``
pulls in, a ``GUEST`` tool's package is in ``vms/image/packages.txt``, an ``ESSENTIAL``
package is Debian Essential (checked with dpkg where there is one); and every registered
row is used somewhere, so dev.sh installs nothing for nothing.  The last tests run the
check on snippets: each rule above fires, and ordinary code passes.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ztun.tools import GUEST_TOOLS, TOOLS, Source, tool, which

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("ztun", "harness", "tests", "conftest.py")
EXEMPT = {"ztun/tools.py"}
"""The registry itself names every program as data."""

SPAWNERS = frozenset(
    {
        "run",
        "spawn",
        "Popen",
        "run_local",
        "check_output",
        "check_call",
        "subprocess.call",
        "exec_argv",
        "_run",
        "_client",
        "_first_line",
        "CommandTimeout",
        "CommandFailed",
        "shlex.join",
    }
)
"""Callees whose list arguments are command lines (matched on the callee's last name;
dotted ones in full: any other ``join`` or ``call`` takes something else).  A function of
the same module whose parameter at that position is named like an argv counts too."""

ARGV_NAME = re.compile(r"(?i)(^|_)(argv|cmd|command|prefix)$")
ARGV_COLLECTION_NAME = re.compile(r"(?i)(^|_)(argvs|cmds|commands)$")
ARGV_FUNCTION = re.compile(r"(?i)(^|_)(argv|cmd|command)$")
TOOLS_COLLECTION_NAME = re.compile(r"(?i)(^|_)tools$")
TOOL_CONSTANT_NAME = re.compile(r"(^|_)(BINARY|BIN|EXE|EXECUTABLE|PROGRAM|TOOL)$")
LOOKUPS = frozenset({"require_tool", "have_tool", "which", "missing"})

# dash's builtins and reserved words: a script may name these without the registry.
SHELL_BUILTINS = frozenset(
    [
        ":",
        ".",
        "[",
        "alias",
        "bg",
        "break",
        "cd",
        "command",
        "continue",
        "echo",
        "eval",
        "exec",
        "exit",
        "export",
        "false",
        "fg",
        "getopts",
        "hash",
        "jobs",
        "kill",
        "local",
        "printf",
        "pwd",
        "read",
        "readonly",
        "return",
        "set",
        "shift",
        "test",
        "times",
        "trap",
        "true",
        "type",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
    ]
)
SHELL_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", "{", "!", "$(", "`"})
SHELL_KEYWORDS = frozenset({"then", "do", "else", "elif", "if", "while", "until"})
SHELL_CLOSERS = frozenset({"}", ")", "done", "fi", "esac"})
SHELL_REDIRECTS = frozenset({">", ">>", "<", ">&", "<&", "&>", "2>", ">|"})
WRAPPER_VALUE_OPTIONS = {
    "timeout": {"-k", "-s", "--kill-after", "--signal"},
    "env": {"-u", "--unset", "-C", "--chdir"},
    "nsenter": {"-t", "--target", "-S", "--setuid", "-G", "--setgid"},
    "unshare": {"--propagation", "--setgroups"},
    "setsid": set(),
}
"""Programs that run the program named after their options (and their options' values)."""

TOOL_PH = "__tool__"
GUEST_PH = "__guest__"
VALUE_PH = "__value__"


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _callee(call: ast.Call) -> str:
    return ast.unparse(call.func)


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _last_name(node.value)
    return ""


def _registry_call(node: ast.expr) -> tuple[str, ast.Call] | None:
    """``("tool" | "guest_tool", call)`` for ``tool(...)`` / ``guest_tool(...)``."""
    if isinstance(node, ast.Call):
        name = _last_name(node.func)
        if name in ("tool", "guest_tool"):
            return name, node
    return None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class Scanner(ast.NodeVisitor):
    """The findings of one module (see the module docstring for what is checked)."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.tree = tree
        self.findings: list[Finding] = []
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.functions = {
            node.name: node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.argvs_seen: set[tuple[str, int]] = set()
        self.used: set[tuple[str, str]] = set()
        """(``tool`` | ``guest_tool``, name) of every registry name the module uses."""

    def add(self, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), message))

    # ---------------------------------------------------------------- which lists are argv

    def is_argv(self, node: ast.expr) -> bool:
        parent = self.parents.get(node)
        if isinstance(parent, ast.Call) and node is not parent.func:
            callee = _callee(parent)
            if callee in SPAWNERS or callee.rsplit(".", 1)[-1] in SPAWNERS:
                return True
            if node in parent.args and self.argv_parameter(parent, parent.args.index(node)):
                return True
            if _last_name(parent.func) in ("append", "insert") and isinstance(
                parent.func, ast.Attribute
            ):
                receiver = _last_name(parent.func.value)
                return receiver == "undo" or bool(ARGV_COLLECTION_NAME.search(receiver))
        if isinstance(parent, ast.keyword):
            call = self.parents.get(parent)
            return parent.arg in ("argv", "cmd", "command") or (
                isinstance(call, ast.Call) and _callee(call).rsplit(".", 1)[-1] in SPAWNERS
            )
        if isinstance(parent, ast.Assign | ast.AnnAssign):  # not +=: that extends one
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            return any(ARGV_NAME.search(_last_name(t)) for t in targets)
        if isinstance(parent, ast.Return):
            function = self.enclosing_function(parent)
            return function is not None and bool(ARGV_FUNCTION.search(function.name))
        if isinstance(parent, ast.BinOp) and node is parent.left:  # argv + [...]: the start
            return self.is_argv(parent)
        if isinstance(parent, ast.IfExp) and node is not parent.test:
            return self.is_argv(parent)
        if isinstance(parent, ast.List | ast.Tuple | ast.Dict):
            grand = self.parents.get(parent)
            if isinstance(grand, ast.Assign | ast.AnnAssign):
                targets = grand.targets if isinstance(grand, ast.Assign) else [grand.target]
                return any(ARGV_COLLECTION_NAME.search(_last_name(t)) for t in targets)
        return False

    def argv_parameter(self, call: ast.Call, index: int) -> bool:
        """Whether ``call`` (to a function of this module) takes an argv at ``index``."""
        function = self.functions.get(_last_name(call.func))
        if function is None:
            return False
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        if params[:1] in (["self"], ["cls"]) and isinstance(call.func, ast.Attribute):
            params = params[1:]
        return index < len(params) and bool(ARGV_NAME.search(params[index]))

    def vararg_argv(self, call: ast.Call) -> int | None:
        """Where the argv starts among ``call``'s arguments when it calls a function of
        this module that takes it as ``*argv`` and hands that to a spawn-like call
        (``def _run(host, *argv): host.run(list(argv))``), else None."""
        function = self.functions.get(_last_name(call.func))
        if function is None or function.args.vararg is None:
            return None
        vararg = function.args.vararg.arg
        if not ARGV_NAME.search(vararg) or not any(
            isinstance(node, ast.Call)
            and _callee(node).rsplit(".", 1)[-1] in SPAWNERS
            and any(isinstance(n, ast.Name) and n.id == vararg for n in ast.walk(node))
            for node in ast.walk(function)
        ):
            return None
        params = [a.arg for a in function.args.posonlyargs + function.args.args]
        if params[:1] in (["self"], ["cls"]) and isinstance(call.func, ast.Attribute):
            params = params[1:]
        return len(params)

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    # ---------------------------------------------------------------- visitors

    def visit_List(self, node: ast.List) -> None:
        self.check_sequence(node)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        self.check_sequence(node)
        self.generic_visit(node)

    def check_sequence(self, node: ast.List | ast.Tuple) -> None:
        if not node.elts:
            return
        second = node.elts[1] if len(node.elts) > 1 else None
        is_argv = self.is_argv(node) or (
            _literal(node.elts[0]) in TOOLS | GUEST_TOOLS.keys()
            and (isinstance(second, ast.Starred) or (_literal(second) or "").startswith("-"))
        )
        if is_argv:
            self.check_argv(node.elts)

    def assigned(self, name: ast.Name) -> list[ast.expr]:
        """The values assigned to ``name`` in its function (or the module)."""
        scope = self.enclosing_function(name) or self.tree
        values = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name.id for t in targets):
                    values.append(node.value)
        if not values and scope is not self.tree:  # a module-level constant: PING = [...]
            for node in self.tree.body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign) and node.value is not None
                    else []
                )
                if any(isinstance(t, ast.Name) and t.id == name.id for t in targets):
                    assert node.value is not None
                    values.append(node.value)
        return values

    def iterated_into(self, name: ast.Name) -> list[ast.expr]:
        """The argv collections a loop takes ``name`` from, in its function (or the
        module): ``for argv in ARGVS`` gives ARGVS's elements, ``for key, argv in
        VIEWS.items()`` / ``for argv in VIEWS.values()`` the dict VIEWS's values."""
        scope = self.enclosing_function(name) or self.tree
        found: list[ast.expr] = []
        for node in ast.walk(scope):
            if not isinstance(node, ast.For | ast.comprehension):
                continue
            target, source = node.target, node.iter
            method = ""
            if isinstance(source, ast.Call) and isinstance(source.func, ast.Attribute):
                method, source = source.func.attr, source.func.value
            if not isinstance(source, ast.Name):
                continue
            if isinstance(target, ast.Name) and target.id == name.id:
                wanted = {"": "elements", "values": "values"}.get(method)
            elif (
                isinstance(target, ast.Tuple)
                and method == "items"
                and len(target.elts) == 2
                and isinstance(target.elts[1], ast.Name)
                and target.elts[1].id == name.id
            ):
                wanted = "values"
            else:
                continue
            for collection in self.assigned(source):
                if wanted == "values" and isinstance(collection, ast.Dict):
                    found += [v for v in collection.values if v is not None]
                elif wanted == "elements" and isinstance(collection, ast.List | ast.Tuple):
                    found += collection.elts
        return found

    def check_argv_name(self, name: ast.Name) -> None:
        """``run(cmd)`` / ``[*prefix, ...]``: the lists assigned to the name are argvs."""
        key = (name.id, id(self.enclosing_function(name)))
        if key in self.argvs_seen:
            return
        self.argvs_seen.add(key)
        for value in self.assigned(name) or self.iterated_into(name):
            if isinstance(value, ast.List | ast.Tuple) and value.elts:
                self.check_argv(value.elts)

    def check_argv(self, elts: list[ast.expr], at: int = 0) -> None:
        """Check the program at ``elts[at]`` and the programs its wrappers run."""
        while at < len(elts):
            first = elts[at]
            if isinstance(first, ast.Starred) and isinstance(first.value, ast.Name):
                self.check_argv_name(first.value)
                return
            program = self.check_program(first, "argv[0]")
            if program is None:
                return
            rest = elts[at + 1 :]
            words = [_literal(e) for e in rest]
            if program == "ip" and words[:2] == ["netns", "exec"] and len(rest) > 3:
                at += 4
            elif program in ("sh", "bash") and words[:1] == ["-c"] and len(rest) > 1:
                self.check_script_expr(rest[1])
                return
            elif program in WRAPPER_VALUE_OPTIONS:
                at += 1 + self.wrapper_skip(program, rest)
            else:
                return

    def wrapper_skip(self, wrapper: str, rest: list[ast.expr]) -> int:
        """How many of ``rest`` are the wrapper's options (and duration, assignments)."""
        i = 0
        needs_duration = wrapper == "timeout"
        while i < len(rest):
            word = _literal(rest[i])
            if isinstance(rest[i], ast.Starred) and wrapper == "env":
                i += 1  # env's K=V pairs from a generator
            elif word is not None and word.startswith("-"):
                i += 2 if word in WRAPPER_VALUE_OPTIONS[wrapper] else 1
            elif wrapper == "env" and word is not None and "=" in word:
                i += 1
            elif needs_duration:
                needs_duration = False
                i += 1
            else:
                break
        return i

    def check_program(self, node: ast.expr, where: str) -> str | None:
        """The registered name at ``node`` (or None for a runtime value); reports literals."""
        registry = _registry_call(node)
        if registry is not None:
            return self.check_registry_call(*registry)
        literal = _literal(node)
        if literal is None and isinstance(node, ast.JoinedStr) and node.values:
            literal = _literal(node.values[0])  # f"qemu-{arch}": a name; f"{venv}/..": a path
        if literal is not None and not literal.startswith("-"):  # "-x": options, no program
            name = literal.rsplit("/", 1)[-1]
            self.add(
                node,
                f"{where} names the program {literal!r} by a string literal: " + self.advice(name),
            )
        return None

    def advice(self, name: str) -> str:
        if name in TOOLS:
            return f'write tool("{name}") (from ztun.tools import tool)'
        if name in GUEST_TOOLS:
            return f'write guest_tool("{name}") (from ztun.tools import guest_tool)'
        return (
            f"{name!r} is not in ztun.tools: register it (TOOLS, or GUEST_TOOLS for a "
            "command run in the VM guest) with its Debian package, add the package to "
            'dev.sh, and write tool("' + name + '")'
        )

    def check_registry_call(self, kind: str, call: ast.Call) -> str | None:
        name = _literal(call.args[0]) if len(call.args) == 1 else None
        if name is None:
            function = self.enclosing_function(call)
            if function is None or function.name not in LOOKUPS:  # helpers pass names on
                self.add(call, f"{kind}() takes a literal name, so this check can see it")
            return None
        table = TOOLS if kind == "tool" else GUEST_TOOLS
        if name not in table:
            self.add(call, f"{kind}({name!r}): not registered. " + self.advice(name))
        self.used.add((kind, name))
        return name

    def visit_Call(self, node: ast.Call) -> None:
        callee = _callee(node)
        last = callee.rsplit(".", 1)[-1]
        registry = _registry_call(node)
        if registry is not None:
            self.check_registry_call(*registry)
        if callee in SPAWNERS or last in SPAWNERS:
            for arg in node.args:
                if isinstance(arg, ast.Name):
                    self.check_argv_name(arg)
        if last in ("append", "insert") and isinstance(node.func, ast.Attribute):
            receiver = _last_name(node.func.value)
            if receiver == "undo" or ARGV_COLLECTION_NAME.search(receiver):
                for arg in node.args:  # undo.append(qdisc_del): the list named
                    if isinstance(arg, ast.Name):
                        self.check_argv_name(arg)
        argv_from = self.vararg_argv(node)
        if argv_from is not None and argv_from < len(node.args):
            self.check_argv(node.args[argv_from:])
        name = _literal(node.args[0]) if node.args else None
        if callee == "shutil.which" and name is not None:
            self.add(
                node,
                f'shutil.which({name!r}): write ztun.tools.which("{name}") '
                "(the registry's lookup)" + ("" if name in TOOLS else f"; {self.advice(name)}"),
            )
        elif last in LOOKUPS and callee != "shutil.which":
            for arg in node.args:
                for item in arg.elts if isinstance(arg, ast.List | ast.Tuple) else [arg]:
                    name = _literal(item)
                    if name is not None and name not in TOOLS:
                        self.add(item, f"{last}({name!r}): {self.advice(name)}")
                    elif name is not None:
                        self.used.add(("tool", name))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self.check_assignment(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.check_assignment(node.target, node.value)
        self.generic_visit(node)

    def check_assignment(self, target: ast.expr, value: ast.expr) -> None:
        name = _last_name(target)
        literal = _literal(value)
        if (
            literal is not None
            and name.isupper()
            and self.path not in EXEMPT
            and (literal in TOOLS or literal in GUEST_TOOLS or TOOL_CONSTANT_NAME.search(name))
        ):
            self.add(value, f"tool-name constant {name} = {literal!r}: {self.advice(literal)}")
        if TOOLS_COLLECTION_NAME.search(name) and isinstance(value, ast.List | ast.Tuple):
            for item in value.elts:
                item_name = _literal(item)
                if item_name is not None and item_name not in TOOLS:
                    self.add(item, f"{name} lists {item_name!r}: {self.advice(item_name)}")
                elif item_name is not None:  # listed for a lookup (require_tool(*FOO_TOOLS))
                    self.used.add(("tool", item_name))

    # ---------------------------------------------------------------- shell scripts

    def check_script_expr(self, node: ast.expr, depth: int = 0) -> None:
        """Check the script ``node`` evaluates to, following names and calls in this module."""
        if depth > 4:
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for side in (node.left, node.right):
                self.check_script_expr(side, depth + 1)
        elif isinstance(node, ast.IfExp):
            for branch in (node.body, node.orelse):
                self.check_script_expr(branch, depth + 1)
        elif isinstance(node, ast.Name):  # script = "..." earlier in the function or module
            scope = self.enclosing_function(node) or self.tree
            for assign in ast.walk(scope):
                if isinstance(assign, ast.Assign | ast.AnnAssign) and assign.value is not None:
                    targets = assign.targets if isinstance(assign, ast.Assign) else [assign.target]
                    if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                        self.check_script_expr(assign.value, depth + 1)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and (node.func.attr == "format")
        ):  # "sleep {}".format(x): the template is the script
            self.check_script_expr(node.func.value, depth + 1)
        elif isinstance(node, ast.Call) and _last_name(node.func) in self.functions:
            for ret in ast.walk(self.functions[_last_name(node.func)]):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    self.check_script_expr(ret.value, depth + 1)
        elif isinstance(node, ast.Constant | ast.JoinedStr):
            self.check_script_text(node)

    def check_script_text(self, node: ast.Constant | ast.JoinedStr) -> None:
        for word in command_words(_shell_text(node)):
            # {tool("x")} was checked as a call; $x and {value} are decided at run time.
            if word.startswith((TOOL_PH, GUEST_PH, VALUE_PH, "$")) or word in SHELL_BUILTINS:
                continue
            self.add(
                node,
                f"sh -c script runs {word!r} by name: write {{tool({word!r})}} in an "
                f"f-string. {self.advice(word)}",
            )


def _shell_text(node: ast.Constant | ast.JoinedStr) -> str:
    """The script's text, with ``{tool("x")}`` as ``__tool__x`` and other values opaque."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            registry = _registry_call(value.value)
            name = _literal(registry[1].args[0]) if registry and registry[1].args else None
            if registry and name:
                parts.append((TOOL_PH if registry[0] == "tool" else GUEST_PH) + name)
            else:
                parts.append(VALUE_PH)
    return "".join(parts)


def command_words(script: str) -> Iterator[str]:
    """The words a POSIX shell would run as commands in ``script`` (not builtins' args).

    Enough shell for the snippets the harness writes: lists, pipelines, subshells, groups,
    ``if``/``while`` bodies, ``$( )`` (also inside double quotes), redirections,
    ``VAR=value`` prefixes and the wrappers of :data:`WRAPPER_VALUE_OPTIONS`.
    """
    lexer = shlex.shlex(script.replace("\n", ";"), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    at_command = True
    skip_next = False
    wrapper: str | None = None
    for token in lexer:
        for inner in re.findall(r"\$\((.*?)\)", token) + re.findall(r"`(.*?)`", token):
            yield from command_words(inner)
        if skip_next:
            skip_next = False
            continue
        if token in SHELL_REDIRECTS or re.fullmatch(r"\d?[<>]+&?", token):
            skip_next = not token.endswith("&")
            continue
        if token in SHELL_SEPARATORS or token in SHELL_KEYWORDS or token.endswith("$"):
            at_command, wrapper = True, None
            continue
        if not at_command or token in SHELL_CLOSERS:
            continue
        if wrapper is not None:
            if token.startswith("-"):
                skip_next = token in WRAPPER_VALUE_OPTIONS.get(wrapper, set())
                continue
            if wrapper == "timeout" and re.fullmatch(r"[\d.]+[smhd]?", token):
                continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
            continue  # VAR=value before a command
        yield token
        name = token.removeprefix(TOOL_PH).removeprefix(GUEST_PH)
        if name in ("exec", "command", "nohup") or name in WRAPPER_VALUE_OPTIONS:
            wrapper = name
            continue
        at_command, wrapper = False, None


def scan(path: str, source: str) -> Scanner:
    scanner = Scanner(path, ast.parse(source, path))
    scanner.visit(scanner.tree)
    scanner.findings = list(dict.fromkeys(scanner.findings))
    return scanner


def findings_in(source: str, path: str = "snippet.py") -> list[str]:
    return [finding.message for finding in scan(path, textwrap.dedent(source)).findings]


@functools.cache
def scan_tree() -> tuple[list[Finding], frozenset[tuple[str, str]]]:
    """The findings in ztun/, harness/ and tests/, and the registry names they use."""
    findings: list[Finding] = []
    used: set[tuple[str, str]] = set()
    for top in (ROOT / name for name in SCANNED):
        for path in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            rel = path.relative_to(ROOT).as_posix()
            if rel not in EXEMPT:
                scanner = scan(rel, path.read_text())
                findings += scanner.findings
                used |= scanner.used
    return findings, frozenset(used)


# ------------------------------------------------------------------------------- tests


def test_every_program_the_code_starts_is_registered() -> None:
    findings = scan_tree()[0]
    assert not findings, (
        f"{len(findings)} call site(s) name a program outside ztun.tools:\n"
        + "\n".join(map(str, findings))
    )


def dev_sh_arrays() -> dict[str, set[str]]:
    """``NAME=(pkg ...)`` bash arrays of dev.sh (multi-line, comments allowed)."""
    text = (ROOT / "dev.sh").read_text()
    arrays = {}
    for match in re.finditer(r"^([A-Z_]+)=\((.*?)\)", text, re.S | re.M):
        body = re.sub(r"#[^\n]*", "", match.group(2))
        arrays[match.group(1)] = set(body.split())
    return arrays


def guest_packages() -> set[str]:
    lines = (ROOT / "vms/image/packages.txt").read_text().splitlines()
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_dev_sh_installs_each_registered_package(name: str) -> None:
    entry = TOOLS[name]
    if entry.source.dev_sh_list is not None:
        array = entry.source.dev_sh_list
        assert entry.package in dev_sh_arrays().get(array, set()), (
            f"{name} comes from the Debian package {entry.package}, which dev.sh's "
            f"{array} does not install: add it there"
        )
    elif entry.source is Source.PYPI:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
        dev = " ".join(extras["dev"])
        providing = [
            extra
            for extra, reqs in extras.items()
            if any(re.match(rf"{re.escape(entry.package)}\b", r) for r in reqs)
            and (extra == "dev" or extra in dev)
        ]
        assert providing, f"{name}: no pyproject extra that dev pulls in requires {entry.package}"
    elif entry.source is Source.EXTERNAL:
        assert entry.why, f"{name}: an EXTERNAL tool says why nothing here installs it"
    else:
        assert entry.source is Source.ESSENTIAL


@pytest.mark.parametrize("name", sorted(GUEST_TOOLS))
def test_the_guest_recipe_installs_each_guest_tool(name: str) -> None:
    entry = GUEST_TOOLS[name]
    if entry.source is not Source.ESSENTIAL:
        assert entry.package in guest_packages(), (
            f"guest_tool({name!r}) comes from {entry.package}, which "
            "vms/image/packages.txt does not list: add it there"
        )


ESSENTIAL_PACKAGES = sorted(
    {t.package for t in [*TOOLS.values(), *GUEST_TOOLS.values()] if t.source is Source.ESSENTIAL}
)


@pytest.mark.skipif(which("dpkg-query") is None, reason="no dpkg here to ask")
@pytest.mark.parametrize("package", ESSENTIAL_PACKAGES)
def test_essential_tools_come_from_essential_packages(package: str) -> None:
    """ESSENTIAL means on every Debian system, a minimal chroot and the guest included."""
    result = subprocess.run(
        [tool("dpkg-query"), "-W", "-f=${Essential}", package],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.stdout == "yes", (
        f"{package} is not Debian Essential ({result.stdout or result.stderr.strip()}): "
        "register its tools as APT and add the package to dev.sh"
    )


@pytest.mark.parametrize(
    ("kind", "name"),
    [("tool", n) for n in sorted(TOOLS)] + [("guest_tool", n) for n in sorted(GUEST_TOOLS)],
)
def test_every_registered_tool_is_used(kind: str, name: str) -> None:
    """A row nothing starts would make dev.sh install a package for nothing."""
    assert (kind, name) in scan_tree()[1], f"{kind}({name!r}) is registered but never used"


# ----------------------------------------------------------- the check itself can fail


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('host.run(["frobnicator", "-L"])', "'frobnicator' is not in ztun.tools"),
        ('host.run([tool("frobnicator"), "-L"])', "tool('frobnicator'): not registered"),
        ('subprocess.run(["tcpdump", "-r", p])', 'write tool("tcpdump")'),
        ('argv = ["ip", "link"]', 'write tool("ip")'),
        ('undo.append(["nft", "delete", "table"])', 'write tool("nft")'),
        ('PING = ["ping", "-c", "1"]', 'write tool("ping")'),
        ('prefix = ["ip", "netns", "exec", n]\nhost.run([*prefix, "x"])', 'write tool("ip")'),
        ('cmd = ["sh", "-c", "x"]\nsubprocess.run(cmd)', 'write tool("sh")'),
        ('host.run([tool("ip"), "netns", "exec", ns, "ping", "-c1"])', 'write tool("ping")'),
        ('host.run([tool("setsid"), "-f", "iperf3", "-s"])', 'write tool("iperf3")'),
        ('host.run([guest_tool("timeout"), "-k", "1", "5", "curl"])', 'write tool("curl")'),
        ('host.run([tool("sh"), "-c", "sleep 1; echo hi"])', "script runs 'sleep'"),
        ('host.run([tool("sh"), "-c", "echo $(nc -l 1)"])', "script runs 'nc'"),
        ('s = "x && socat -"\nhost.run([tool("sh"), "-c", s])', "script runs 'socat'"),
        ('s = "nc -l {}"\nhost.run([tool("sh"), "-c", s.format(1)])', "script runs 'nc'"),
        ('shutil.which("nft")', "shutil.which('nft')"),
        ('require_tool("frobnicator")', "require_tool('frobnicator')"),
        ('QEMU = "qemu-system-x86_64"', "tool-name constant QEMU"),
        ('NC_BINARY = "nc"', "tool-name constant NC_BINARY"),
        ('guest_tool("nft")', "guest_tool('nft'): not registered"),
        ("def f(n):\n    return tool(n)", "takes a literal name"),
        # a dict of argvs, iterated into a spawn (harness/hygiene.py's ROOT_VIEWS)
        (
            'VIEWS: dict = {"a": [tool("ip"), "link"], "b": ["ip", "rule"]}\n'
            "def f():\n    for _k, argv in VIEWS.items():\n        run_local(argv)",
            'write tool("ip")',
        ),
        ('LISTS = [["frobnicator", "x"]]\nfor argv in LISTS:\n    run_local(argv)', "frobnicator"),
        # a named list appended to an undo list (harness/faults.py)
        ('qdisc_del = ["tc", "qdisc", "del"]\napplied.undo.append(qdisc_del)', 'write tool("tc")'),
        # the program as a helper's *argv (tests/integration/core/test_ztun_icmp.py)
        (
            'def _go(host, *argv):\n    host.run(list(argv))\n_go(h, "sysctl", "-w", "x=1")',
            'write tool("sysctl")',
        ),
    ],
)
def test_the_check_finds(source: str, expected: str) -> None:
    found = findings_in(source)
    assert any(expected in message for message in found), found


@pytest.mark.parametrize(
    "source",
    [
        'host.run([sys.executable, "-m", "ztun"])',
        'host.run([binary, "-f", conf])',
        'host.run([tool("sh"), "-c", f"{tool(\'sleep\')} 1; echo hi >&2; exit 3"])',
        'host.run([tool("sh"), "-c", "read x; test -e f && kill -0 $x || true"])',
        'host.run([tool("ip"), "netns", "exec", ns, tool("ping"), "-c1"])',
        '", ".join(["danted", "microsocks"])',
        'pytest.mark.parametrize("kind", ["danted", "microsocks"])',
        'shutil.which(tool("nft"))',
        'require_tool("tcpdump", "ip")',
        'argv += ["-c", "1"]',
        # *argv that is parsed, not spawned (tests/unit/control/test_control_commands.py)
        'def go(path, *argv):\n    return parser.parse_args([*argv, path])\ngo(p, "flows")',
        'def _go(host, *argv):\n    host.run(list(argv))\n_go(h, tool("sysctl"), "-w")',
    ],
)
def test_the_check_accepts(source: str) -> None:
    assert findings_in(source) == []
