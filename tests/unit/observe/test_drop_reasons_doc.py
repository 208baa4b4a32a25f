"""Every drop reason, as the code names it, is the list `ztun/metrics.py` keeps and the
table docs/metrics.md shows -- no more, no fewer.

The stack's reasons are read from its source (ast, no import): the string literals it
counts under (``self.counters["x"]``, ``self._drop("x")``, the reassembler's
``_refuse``/``_discard`` reasons) and ``malformed_<reason>`` for every reason a packet
parser of ``ztun.wire`` the stack calls raises (``Malformed("x", ...)``,
``Truncated(...)``), which the stack counts as ``malformed_{exc.reason}``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ztun.metrics import ENGINE_DROPS, STACK_DROPS, STACK_NOT_DROPS

ROOT = Path(__file__).resolve().parents[3]
STACK_COUNTER_OWNERS = ("ztun/stack/system.py", "ztun/stack/reassembly.py")
REASON_CALLS = {"_drop": 0, "_refuse": 1, "_discard": 2}  # method -> reason argument
WIRE_ERRORS = {"Malformed", "Truncated", "WireError"}
#: The parsers behind the stack's `parse_ip` and its transport views. Not fragment.py's
#: `fragment_ip` (its errors reach the writer, not the counters) nor vnet.py (the TUN's
#: frame header, counted by the engine as tun_short_frame).
WIRE_PARSERS = ("ip.py", "ipv4.py", "ipv6.py", "tcp.py", "udp.py", "_icmpbase.py")


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def stack_counters() -> set[str]:
    """Every counter name the stack's source writes."""
    names: set[str] = set()
    for rel in STACK_COUNTER_OWNERS:
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "counters"
                and (name := _literal(node.slice)) is not None
            ):
                names.add(name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                at = REASON_CALLS.get(node.func.attr)
                if at is not None and len(node.args) > at:
                    reason = _literal(node.args[at])
                    assert reason is not None, f"{rel}:{node.lineno}: a reason not literal"
                    names.add(reason)
    return names | {f"malformed_{reason}" for reason in wire_reasons()}


def wire_reasons() -> set[str]:
    reasons = {"truncated"}  # Truncated()'s default
    for path in (ROOT / "ztun/wire" / name for name in WIRE_PARSERS):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in WIRE_ERRORS
                and node.args
            ):
                reason = _literal(node.args[0])
                assert reason is not None, f"{path.name}:{node.lineno}: a reason not literal"
                reasons.add(reason)
    return reasons


def documented_reasons() -> list[str]:
    """The first column of the drop reasons table of docs/metrics.md."""
    text = (ROOT / "docs/metrics.md").read_text()
    section = text.split("## Drop reasons", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_the_stack_counts_under_the_names_metrics_knows() -> None:
    counted = stack_counters()
    assert counted - STACK_DROPS - STACK_NOT_DROPS == set(), "a stack counter metrics lacks"
    assert STACK_DROPS - counted == set(), "a drop reason the stack no longer counts"
    assert STACK_NOT_DROPS - counted == set(), "a non-drop the stack no longer counts"
    assert STACK_DROPS.isdisjoint(STACK_NOT_DROPS)


def test_docs_metrics_lists_every_drop_reason_once() -> None:
    documented = documented_reasons()
    assert len(documented) == len(set(documented)), "a reason listed twice"
    assert set(documented) == STACK_DROPS | set(ENGINE_DROPS.values())
