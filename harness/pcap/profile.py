"""Per-scenario comparison profiles: the small TOML beside each golden pcap.

A profile says how strictly a capture is compared and, for everything it relaxes, *why*:
a mask without a reason is how regressions get waved through, so a missing ``why`` is an
error, and so is an unknown key (a typo must not silently compare less).

Format (every key optional except ``tier`` and ``why``)::

    tier = "semantic"          # or "strict"
    why = "kernel TCP: delayed ACKs and window updates vary"

    [ports]                    # ports < 1024 are always kept; every other port is
    keep = [1080, 5002]        # mapped to P1, P2... in order of first appearance
    why = "the SOCKS5 and echo ports are part of the scenario"

    [checksums]
    offloaded = ["tcp", "udp"] # accept the bare pseudo-header sum (CHECKSUM_PARTIAL)
    why = "..."

    [addresses]
    why = "..."
    map = { "172.19.0.2" = "hairpin-peer" }

    [decode]                   # application decoders (defaults shown)
    socks5 = [1080]
    dns = [53]

    [[mask]]
    field = "tcp.window"       # see MASKABLE
    why = "..."

    [[predicate]]              # semantic tier: evaluated on every capture
    count = "tcp.flags == SA"  # or: all = "checksum != bad"
    expect = 2                 # optional: checked against the capture, not the golden
    why = "..."
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.pcap.match import parse_match

__all__ = [
    "DEFAULT_DNS_PORTS",
    "DEFAULT_SOCKS5_PORTS",
    "MASKABLE",
    "Mask",
    "Predicate",
    "Profile",
    "ProfileError",
    "Tier",
    "load_profile",
    "parse_profile",
]

Tier = Literal["strict", "semantic"]
TIERS: tuple[Tier, ...] = ("strict", "semantic")

WELL_KNOWN_LIMIT = 1024
"""Ports below this are services, never ephemeral: always kept."""

DEFAULT_SOCKS5_PORTS = (1080,)
DEFAULT_DNS_PORTS = (53,)

OFFLOADABLE = ("tcp", "udp", "icmp6")
"""Protocols whose checksum a Linux sender may leave to the device (pseudo-header sum)."""

MASKABLE: dict[str, str] = {
    "ip.id": "IPv4 identification (and IPv6 fragment id) shown as *",
    "ip.ttl": "IPv4 TTL / IPv6 hop limit shown as *",
    "ip6.flow": "IPv6 flow label shown as *",
    "eth": "Ethernet MAC addresses left out",
    "tcp.window": "TCP window shown as *",
    "tcp.ts": "TCP timestamp values shown as *",
    "tcp.options": "TCP options left out",
    "tcp.retransmissions": "TCP segments already seen (same seq, length, flags) dropped",
    "tcp.pure-acks": "TCP segments without data, SYN, FIN or RST dropped",
    "tcp.close-race": "semantic tier: a direction's FIN is left out of its control sequence "
    "when the other direction resets the connection (both ends closing at once race)",
    "payload": "payloads shown by length only (no hash, no first bytes)",
}
"""What a ``[[mask]]`` may name, and what it does."""

_TOP_KEYS = {"tier", "why", "ports", "checksums", "addresses", "decode", "mask", "predicate"}


class ProfileError(ValueError):
    """A profile that cannot be used as written (the message names the file and key)."""


@dataclass(frozen=True, slots=True)
class Mask:
    field: str
    why: str


@dataclass(frozen=True, slots=True)
class Predicate:
    """``count(match)`` or ``all(match)`` over a capture's packets (see harness.pcap.semantic)."""

    kind: Literal["count", "all"]
    match: str
    why: str
    expect: int | bool | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}({self.match})"


@dataclass(frozen=True, slots=True)
class Profile:
    """How one capture is canonicalised and compared. ``Profile()`` is the strict default."""

    tier: Tier = "strict"
    why: str = "default profile: strict, nothing masked"
    keep_ports: frozenset[int] = frozenset()
    offloaded: frozenset[str] = frozenset()
    address_names: Mapping[str, str] = field(default_factory=dict)
    masks: tuple[Mask, ...] = ()
    predicates: tuple[Predicate, ...] = ()
    socks5_ports: frozenset[int] = frozenset(DEFAULT_SOCKS5_PORTS)
    dns_ports: frozenset[int] = frozenset(DEFAULT_DNS_PORTS)
    source: str = "(default)"

    def masked(self, name: str) -> bool:
        return any(m.field == name for m in self.masks)

    def keeps_port(self, port: int) -> bool:
        return port < WELL_KNOWN_LIMIT or port in self.keep_ports

    def address(self, text: str) -> str:
        return self.address_names.get(text, text)

    def describe(self) -> str:
        """One line for the golden's header: where it came from, its tier and why."""
        return f"profile {self.source}: tier {self.tier} -- {self.why}"


def _fail(source: str, message: str) -> ProfileError:
    return ProfileError(f"profile {source}: {message}")


def _why(table: Mapping[str, Any], where: str, source: str) -> str:
    why = table.get("why")
    if not isinstance(why, str) or not why.strip():
        raise _fail(source, f"{where} needs a non-empty 'why' (say why it compares less)")
    return why.strip()


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(source, f"unknown key(s) {unknown} in {where} (allowed: {sorted(allowed)})")


def _ports(value: Any, where: str, source: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(p, int) and 0 <= p <= 0xFFFF for p in value
    ):
        raise _fail(source, f"{where} must be a list of port numbers")
    return frozenset(value)


def _canonical_address(text: str, source: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _fail(source, f"[addresses] map key {text!r} is not an IP address") from None


def parse_profile(data: Mapping[str, Any], source: str = "(inline)") -> Profile:
    """Validate a parsed TOML table and build the profile."""
    _check_keys(data, _TOP_KEYS, "the top level", source)
    tier = data.get("tier")
    if tier not in TIERS:
        raise _fail(source, f"tier must be one of {list(TIERS)}, not {tier!r}")
    why = _why(data, "the top level", source)

    keep: frozenset[int] = frozenset()
    if "ports" in data:
        ports = data["ports"]
        _check_keys(ports, {"keep", "why"}, "[ports]", source)
        keep = _ports(ports.get("keep", []), "[ports] keep", source)
        _why(ports, "[ports]", source)

    offloaded: frozenset[str] = frozenset()
    if "checksums" in data:
        sums = data["checksums"]
        _check_keys(sums, {"offloaded", "why"}, "[checksums]", source)
        names = sums.get("offloaded", [])
        if not isinstance(names, list) or any(n not in OFFLOADABLE for n in names):
            raise _fail(source, f"[checksums] offloaded must list some of {list(OFFLOADABLE)}")
        offloaded = frozenset(names)
        _why(sums, "[checksums]", source)

    names_map: dict[str, str] = {}
    if "addresses" in data:
        addrs = data["addresses"]
        _check_keys(addrs, {"map", "why"}, "[addresses]", source)
        _why(addrs, "[addresses]", source)
        for key, value in dict(addrs.get("map", {})).items():
            if not isinstance(value, str) or not value:
                raise _fail(source, f"[addresses] map value for {key!r} must be a name")
            names_map[_canonical_address(key, source)] = value

    socks5, dns = frozenset(DEFAULT_SOCKS5_PORTS), frozenset(DEFAULT_DNS_PORTS)
    if "decode" in data:
        decode = data["decode"]
        _check_keys(decode, {"socks5", "dns"}, "[decode]", source)
        socks5 = _ports(decode.get("socks5", list(socks5)), "[decode] socks5", source)
        dns = _ports(decode.get("dns", list(dns)), "[decode] dns", source)

    masks: list[Mask] = []
    for i, entry in enumerate(data.get("mask", [])):
        where = f"[[mask]] #{i + 1}"
        _check_keys(entry, {"field", "why"}, where, source)
        name = entry.get("field")
        if name not in MASKABLE:
            raise _fail(source, f"{where}: field {name!r} is not one of {sorted(MASKABLE)}")
        masks.append(Mask(name, _why(entry, where, source)))

    predicates: list[Predicate] = []
    for i, entry in enumerate(data.get("predicate", [])):
        where = f"[[predicate]] #{i + 1}"
        _check_keys(entry, {"count", "all", "expect", "why"}, where, source)
        kinds = [k for k in ("count", "all") if k in entry]
        if len(kinds) != 1 or not isinstance(entry[kinds[0]], str):
            raise _fail(source, f'{where}: give exactly one of count = "..." or all = "..."')
        kind: Literal["count", "all"] = "count" if kinds[0] == "count" else "all"
        expect = entry.get("expect")
        wanted = bool if kind == "all" else int
        if expect is not None and type(expect) is not wanted:
            kind_text = "true or false" if kind == "all" else "an integer"
            raise _fail(source, f"{where}: expect must be {kind_text}")
        predicates.append(Predicate(kind, entry[kind], _why(entry, where, source), expect))

    # Parse every predicate now: a bad expression must fail at load, not mid-comparison.
    for pred in predicates:
        try:
            parse_match(pred.match)
        except ValueError as exc:
            raise _fail(source, f"predicate {pred.label}: {exc}") from None

    return Profile(
        tier=tier,
        why=why,
        keep_ports=keep,
        offloaded=offloaded,
        address_names=names_map,
        masks=tuple(masks),
        predicates=tuple(predicates),
        socks5_ports=socks5,
        dns_ports=dns,
        source=source,
    )


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile TOML (ProfileError says what is wrong and where)."""
    target = Path(path)
    try:
        data = tomllib.loads(target.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {target.name}: not valid TOML: {exc}") from None
    return parse_profile(data, source=target.name)
