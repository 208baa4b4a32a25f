"""Ordered routing rules: the first rule whose conditions all hold names the outbound.

An outbound is a name: a proxy, a group of proxies, ``direct`` or ``reject`` (the router
maps names to outbounds; ``ztun.rules.proxies`` validates them).

Conditions, as in sing-box's route rules: the *destination* group (``domain``,
``domain_suffix``, ``domain_keyword``, ``cidr``) matches if any of its items does; then
``port`` and ``network`` must also hold when given.  Lists within one condition are
alternatives.  Domain conditions only see a domain when one is known (fake-IP or sniffed);
``cidr`` sees the real destination address, never a fake one.

``match`` is built for the per-flow path: conditions are pre-compiled (suffix sets walked
label by label, CIDRs bucketed by prefix length, so cost does not grow with list length)
and results are memoised per (network, address, port, domain).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from ztun.rules.proxies import DEFAULT_GROUP, DIRECT, REJECT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Network = Literal["tcp", "udp"]
MEMO_LIMIT = 4096


class Action(StrEnum):
    """What kind of outbound a flow goes to (the legacy ``action`` values)."""

    PROXY = "proxy"  # a proxy or a group of proxies
    DIRECT = "direct"
    REJECT = "reject"

    @classmethod
    def of(cls, outbound: str) -> Action:
        """The kind of the outbound named ``outbound``."""
        if outbound == DIRECT:
            return cls.DIRECT
        if outbound == REJECT:
            return cls.REJECT
        return cls.PROXY


@dataclass(frozen=True, slots=True)
class Flow:
    """What the rules can see of a new flow."""

    network: Network
    dst_ip: IPAddress | None
    dst_port: int
    domain: str | None = None


class _CidrSet:
    """Membership for many prefixes in O(distinct prefix lengths)."""

    __slots__ = ("_buckets",)

    def __init__(self, nets: tuple[IPNetwork, ...]) -> None:
        buckets: dict[tuple[int, int], set[int]] = {}
        for net in nets:
            buckets.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        self._buckets = {
            version: [
                (_mask(version, plen), frozenset(addrs))
                for (v, plen), addrs in sorted(buckets.items())
                if v == version
            ]
            for version in (4, 6)
        }

    def __contains__(self, addr: IPAddress) -> bool:
        value = int(addr)
        return any(value & mask in addrs for mask, addrs in self._buckets[addr.version])


def _mask(version: int, plen: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << plen) - 1) << (bits - plen)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: ``outbound`` names where matching flows go; ``origin``
    ("rules.toml:12") is for logs and errors."""

    outbound: str
    domains: frozenset[str] = frozenset()
    domain_suffixes: frozenset[str] = frozenset()
    domain_keywords: tuple[str, ...] = ()
    cidrs: tuple[IPNetwork, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    networks: frozenset[str] = frozenset()
    origin: str = ""
    _cidr_set: _CidrSet = field(init=False, repr=False, compare=False)
    _port_set: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cidr_set", _CidrSet(self.cidrs))
        small = sum(hi - lo + 1 for lo, hi in self.ports) <= 1024
        port_set = (
            frozenset(p for lo, hi in self.ports for p in range(lo, hi + 1))
            if small
            else frozenset()
        )
        object.__setattr__(self, "_port_set", port_set)

    @property
    def has_destination(self) -> bool:
        return bool(self.domains or self.domain_suffixes or self.domain_keywords or self.cidrs)

    def matches(self, flow: Flow) -> bool:
        """True if every given condition holds for ``flow`` (cheapest checks first)."""
        if self.networks and flow.network not in self.networks:
            return False
        if self.ports and not self._port_matches(flow.dst_port):
            return False
        return not self.has_destination or self._destination_matches(flow)

    def _port_matches(self, port: int) -> bool:
        if self._port_set:
            return port in self._port_set
        return any(lo <= port <= hi for lo, hi in self.ports)

    def _destination_matches(self, flow: Flow) -> bool:
        if flow.dst_ip is not None and self.cidrs and flow.dst_ip in self._cidr_set:
            return True
        domain = flow.domain
        if domain is None:
            return False
        if domain in self.domains:
            return True
        if self.domain_suffixes:
            name = domain
            while True:
                if name in self.domain_suffixes:
                    return True
                dot = name.find(".")
                if dot < 0:
                    break
                name = name[dot + 1 :]
        return any(k in domain for k in self.domain_keywords)


class RuleSet:
    """An ordered rule list with a default outbound."""

    def __init__(self, rules: tuple[Rule, ...] = (), default: str = DEFAULT_GROUP) -> None:
        self.rules = rules
        self.default = default
        self._memo: dict[Flow, tuple[str, Rule | None]] = {}

    def match(self, flow: Flow) -> str:
        """The name of the outbound for ``flow``."""
        return self.explain(flow)[0]

    def explain(self, flow: Flow) -> tuple[str, Rule | None]:
        """The outbound and the rule that chose it (None: the default) -- for logs."""
        hit = self._memo.get(flow)
        if hit is not None:
            return hit
        if flow.domain is not None and flow.domain != flow.domain.lower():
            flow = Flow(flow.network, flow.dst_ip, flow.dst_port, flow.domain.lower().rstrip("."))
        result: tuple[str, Rule | None] = (self.default, None)
        for rule in self.rules:
            if rule.matches(flow):
                result = (rule.outbound, rule)
                break
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()  # cheap bound; hot flows repopulate at once
        self._memo[flow] = result
        return result
