"""Route changes as data: what auto-route wants the kernel to hold, with no I/O.

A plan is a list of frozen :class:`PolicyRule` / :class:`TableRoute` values. Keeping the plan
pure lets the unit tests check the whole design without root, lets the journal store
exactly what was applied (``to_json``/``from_json``), and lets ``describe()`` print the
``ip`` command each change corresponds to (for logs, ``--dry-run`` and review).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Well-known routing tables (linux/rtnetlink.h, enum rt_class_t).
TABLE_MAIN = 254
TABLE_LOCAL = 255
TABLE_DEFAULT = 253
RESERVED_TABLES = frozenset({0, TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL})

RuleAction = Literal["lookup", "unreachable"]
RouteType = Literal["unicast", "unreachable"]

FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


def family_of(net: IPNetwork) -> int:
    """The socket address family of a network (AF_INET or AF_INET6)."""
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _ip_flag(family: int) -> str:
    return "-4" if family == socket.AF_INET else "-6"


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One ``ip rule``: a selector (mark, destination, protocol/port) and an action.

    ``invert`` is FIB_RULE_INVERT, which negates the *whole* selector: that is how
    ``not fwmark M`` is expressed. Because it negates every selector together, the planner
    never combines it with others ("not (mark M and udp dport 53)" matches nearly all
    traffic); the DNS rule says "unmarked" as ``fwmark 0/MASK`` instead.
    """

    family: int
    priority: int
    action: RuleAction = "lookup"
    table: int = 0
    fwmark: int | None = None
    fwmask: int | None = None
    invert: bool = False
    dst: str | None = None
    suppress_prefixlength: int | None = None
    ip_proto: int | None = None
    dport: int | None = None

    kind: Literal["rule"] = "rule"

    def describe(self) -> str:
        """The ``ip rule add`` command this rule corresponds to."""
        parts = ["ip", _ip_flag(self.family), "rule", "add"]
        if self.invert:
            parts.append("not")
        if self.fwmark is not None:
            mark = f"{self.fwmark:#x}"
            if self.fwmask is not None and (self.fwmask != 0xFFFFFFFF or self.fwmark == 0):
                mark += f"/{self.fwmask:#x}"
            parts += ["fwmark", mark]
        if self.dst is not None:
            parts += ["to", self.dst]
        if self.ip_proto is not None:
            parts += ["ipproto", {6: "tcp", 17: "udp"}.get(self.ip_proto, str(self.ip_proto))]
        if self.dport is not None:
            parts += ["dport", str(self.dport)]
        if self.action == "lookup":
            parts += ["lookup", "main" if self.table == TABLE_MAIN else str(self.table)]
        else:
            parts.append(self.action)
        if self.suppress_prefixlength is not None:
            parts += ["suppress_prefixlength", str(self.suppress_prefixlength)]
        parts += ["priority", str(self.priority)]
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_json`` inverts it (the journal's record format)."""
        return {
            "kind": "rule",
            "family": FAMILY_NAMES[self.family],
            "priority": self.priority,
            "action": self.action,
            "table": self.table,
            "fwmark": self.fwmark,
            "fwmask": self.fwmask,
            "invert": self.invert,
            "dst": self.dst,
            "suppress_prefixlength": self.suppress_prefixlength,
            "ip_proto": self.ip_proto,
            "dport": self.dport,
        }


@dataclass(frozen=True, slots=True)
class TableRoute:
    """One route in the auto-route table: ``dst`` into ``device`` or an unreachable entry."""

    family: int
    table: int
    dst: str
    type: RouteType = "unicast"
    device: str | None = None
    metric: int | None = None

    kind: Literal["route"] = "route"

    def describe(self) -> str:
        """The ``ip route add`` command this route corresponds to."""
        parts = ["ip", _ip_flag(self.family), "route", "add"]
        if self.type != "unicast":
            parts.append(self.type)
        parts.append(self.dst)
        if self.device is not None:
            parts += ["dev", self.device]
        parts += ["table", str(self.table)]
        if self.metric is not None:
            parts += ["metric", str(self.metric)]
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_json`` inverts it (the journal's record format)."""
        return {
            "kind": "route",
            "family": FAMILY_NAMES[self.family],
            "table": self.table,
            "dst": self.dst,
            "type": self.type,
            "device": self.device,
            "metric": self.metric,
        }


@dataclass(frozen=True, slots=True)
class SystemRoute:
    """A route in the one routing table of macOS or Windows: ``dst`` out of ``device``
    (interface index ``ifindex``), through ``gateway`` or, without one, on-link (the
    utun or Wintun side of auto-route).

    ``ifindex`` is what the OS calls name the interface by; ``device`` is for people and
    for telling, at restore, whether the index still names the same interface."""

    family: int
    dst: str
    device: str
    ifindex: int
    gateway: str | None = None
    metric: int | None = None

    kind: Literal["sysroute"] = "sysroute"

    def describe(self) -> str:
        """The route in ``route(8)`` words, for logs and errors."""
        parts = ["route", "add", "-inet6" if self.family == socket.AF_INET6 else "-inet"]
        parts.append(self.dst)
        parts += [self.gateway] if self.gateway is not None else ["-interface", self.device]
        if self.gateway is not None:
            parts += ["(" + self.device + ")"]
        if self.metric is not None:
            parts += ["metric", str(self.metric)]
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_json`` inverts it (the journal's record format)."""
        return {
            "kind": "sysroute",
            "family": FAMILY_NAMES[self.family],
            "dst": self.dst,
            "device": self.device,
            "ifindex": self.ifindex,
            "gateway": self.gateway,
            "metric": self.metric,
        }


ResolverValue = str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResolverChange:
    """The system resolver set at ``key`` (a SystemConfiguration dynamic-store key on
    macOS) to ``servers``; ``previous`` is what the key held before, as (name, value)
    pairs, or None when it did not exist -- written to the journal *before* the change,
    so restore can always put it back."""

    key: str
    servers: tuple[str, ...]
    previous: tuple[tuple[str, ResolverValue], ...] | None = None

    kind: Literal["resolver"] = "resolver"

    def describe(self) -> str:
        return f"resolver {self.key} = {' '.join(self.servers)}"

    def to_json(self) -> dict[str, Any]:
        previous = None
        if self.previous is not None:
            previous = [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.previous]
        return {
            "kind": "resolver",
            "key": self.key,
            "servers": list(self.servers),
            "previous": previous,
        }


RouteChange = PolicyRule | TableRoute
#: Everything a journal can hold: Linux policy routing, macOS/Windows routes, resolvers.
JournalChange = PolicyRule | TableRoute | SystemRoute | ResolverChange

_FAMILY_BY_NAME = {name: fam for fam, name in FAMILY_NAMES.items()}


def change_from_json(data: dict[str, Any]) -> JournalChange:
    """Rebuild a change from its journal record; raises ValueError on a foreign record."""
    try:
        if data["kind"] == "resolver":
            previous = data["previous"]
            return ResolverChange(
                key=str(data["key"]),
                servers=tuple(str(s) for s in data["servers"]),
                previous=None
                if previous is None
                else tuple(
                    (str(k), tuple(str(x) for x in v) if isinstance(v, list) else str(v))
                    for k, v in previous
                ),
            )
        family = _FAMILY_BY_NAME[data["family"]]
        if data["kind"] == "sysroute":
            return SystemRoute(
                family=family,
                dst=str(data["dst"]),
                device=str(data["device"]),
                ifindex=int(data["ifindex"]),
                gateway=data["gateway"],
                metric=data["metric"],
            )
        if data["kind"] == "rule":
            return PolicyRule(
                family=family,
                priority=int(data["priority"]),
                action=data["action"],
                table=int(data["table"]),
                fwmark=data["fwmark"],
                fwmask=data["fwmask"],
                invert=bool(data["invert"]),
                dst=data["dst"],
                suppress_prefixlength=data["suppress_prefixlength"],
                ip_proto=data["ip_proto"],
                dport=data["dport"],
            )
        if data["kind"] == "route":
            return TableRoute(
                family=family,
                table=int(data["table"]),
                dst=str(data["dst"]),
                type=data["type"],
                device=data["device"],
                metric=data["metric"],
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a route change record: {data!r}") from exc
    raise ValueError(f"unknown change kind {data.get('kind')!r}")


class RouteError(RuntimeError):
    """A route change failed; the message names the change as an ``ip`` command."""


@dataclass(slots=True)
class RestoreReport:
    """What a restore did: how many entries it removed, found absent, kept, or failed.

    Here, not beside the netlink code: it is returned from a forked netlink child and
    unpickling it must not import pyroute2 into ztun's own process."""

    removed: int = 0
    absent: int = 0
    kept: int = 0
    errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        """As a log line says it: "removed 7 changes ztun made, 1 already gone"."""
        said = [f"removed {_counted(self.removed, 'change')} ztun made"]
        if self.absent:
            said.append(f"{self.absent} already gone")
        if self.kept:
            said.append(f"kept {_counted(self.kept, 'entry', 'entries')} the system already had")
        if self.errors:
            said.append(f"{len(self.errors)} failed: {'; '.join(self.errors)}")
        return ", ".join(said)


def _counted(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
