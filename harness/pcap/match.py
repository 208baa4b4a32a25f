"""The predicate language of a comparison profile: ``field op value`` joined by ``and``.

Its own module because both ends use it: the profile loader (harness.pcap.profile)
parses every expression when it reads the TOML, so a bad one fails at load, and the
semantic tier (harness.pcap.semantic) evaluates them over a normalised capture.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Clause", "matches", "parse_match"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*([a-z][a-z0-9_.]*)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True, slots=True)
class Clause:
    """``field op value``; fields are those the normaliser records per packet
    (proto, ip.version, tcp.flags, tcp.window, len, checksum, icmp.type, icmp.code,
    retransmission, flow)."""

    field: str
    op: str
    value: int | str

    def test(self, fields: Mapping[str, Any]) -> bool:
        have = fields.get(self.field)
        if have is None:
            return self.op == "!="
        want = self.value
        if isinstance(want, int) and isinstance(have, int):
            return _OPS[self.op](have, want)
        if self.op in ("==", "!="):
            return _OPS[self.op](str(have), str(want))
        return False  # ordering between a number and a word: never true


def parse_match(expr: str) -> tuple[Clause, ...]:
    """``"tcp.flags == SA and ip.version == 6"`` -> clauses (ValueError on bad syntax)."""
    clauses: list[Clause] = []
    for part in re.split(r"\s+and\s+", expr.strip()):
        found = _CLAUSE.match(part)
        if found is None:
            raise ValueError(f"cannot read {part!r}: expected 'field == value' joined by 'and'")
        name, op, raw = found.groups()
        value: int | str = int(raw) if re.fullmatch(r"-?\d+", raw) else raw
        clauses.append(Clause(name, op, value))
    return tuple(clauses)


def matches(clauses: tuple[Clause, ...], fields: Mapping[str, Any]) -> bool:
    return all(c.test(fields) for c in clauses)
