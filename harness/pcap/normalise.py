"""Read a pcap and turn it into a canonical trace: stable from run to run and machine to machine.

What changes between two runs of the same scenario, and what this module does about it:

* timestamps -- dropped (capture order is kept);
* ephemeral ports (>= 1024 unless the profile keeps them) -> ``P1, P2...``; TCP sequence
  numbers -> relative to each direction's ISN (Wireshark's relative numbers); TCP
  timestamp values -> ``T1, T2...``; IPv4 IDs and IPv6 fragment ids -> ``I1...``
  (0 stays 0: "no id" is meaningful); IPv6 flow labels -> ``L1...``; ICMP echo
  identifiers -> ``E1...``; MAC addresses -> ``M1...`` (broadcast and multicast kept) --
  each mapped in order of first appearance *in the whole capture*, so the same value
  gets the same name everywhere (a packet and ztun's rewrite of it share their ``I``
  and ``T`` names: the correspondence stays visible);
* IP addresses are kept (they are the scenario) unless the profile names them;
* checksums are verified on the captured bytes first (harness.decode, independent of
  scapy and of ztun), an invalid one is reported on its line, and then they are left
  out: their values are functions of the mapped fields;
* payloads are shown by length, hash and first bytes, or decoded (SOCKS5, DNS).

Packets are grouped into flows (a TCP/UDP 5-tuple in both directions, an ICMP echo
exchange, and an ICMP error goes with the flow it quotes), because the interleaving of
different flows legitimately varies; within a flow the order is the capture's.

Why scapy (not dpkt) for dissection: it is already the harness's packet library
(harness.packets), it dissects everything a trace of ours contains -- TCP options,
ICMPv6 neighbour discovery, ARP, DNS -- and it is maintained; dpkt would be a second
packet library with its own idea of every header (and a ``__bytes__`` that mutates the
object and treats checksum 0 as "recompute", STYLE.md). Scapy is never asked whether a
checksum is right: it recomputes fields on rebuild, which hides exactly the errors we
look for; harness.decode sums the captured bytes itself.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from harness.decode import (
    LINKTYPE_ETHERNET,
    DecodeError,
    Frame,
    IpPacket,
    decode_ip,
    ip_bytes,
    read_pcap,
    verify_checksums,
)
from harness.pcap.payload import (
    RawStream,
    SocksClientStream,
    SocksServerStream,
    SocksSession,
    Stream,
    describe_bytes,
    describe_dns,
    describe_socks_udp,
)
from harness.pcap.profile import Profile

__all__ = ["CanonPacket", "Flow", "Mapper", "TcpSegment", "Trace", "canonicalise"]

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
ETHERTYPE_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
IPV4_MIN_HEADER, IPV6_EXT_FRAGMENT, IPV6_EXT_AH = 20, 44, 51
ICMP_MIN_LEN = 4  # type, code, checksum
ICMP4_UNREACH, ICMP4_FRAG_NEEDED, ICMP6_TOO_BIG = 3, 4, 2
IPV4_DF, IPV4_MF, IPV4_OFFSET = 0x4000, 0x2000, 0x1FFF
FRAGMENT_UNIT = 8
ETH_HEADER, MAC_LEN = 14, 6
TCP_MIN_HEADER, UDP_HEADER, ICMP_HEADER = 20, 8, 8
SEQ_SPACE = 1 << 32
EXT_NAMES = {0: "hbh", 43: "rt", 44: "frag", 60: "dst", 51: "ah"}
IPV6_HEADER = 40

TCP_LETTERS = "FSRPAUEC"
"""Flag letters by bit (FIN = bit 0), as scapy prints them: ``SA`` is a SYN-ACK."""
TCPDUMP_FLAGS = (
    (0x01, "F"),
    (0x02, "S"),
    (0x04, "R"),
    (0x08, "P"),
    (0x10, "."),
    (0x20, "U"),
    (0x40, "E"),
    (0x80, "W"),
)
"""tcpdump's ``Flags [S.]`` notation, in tcpdump's order."""
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10

ICMP_NAMES = {
    (0, None): "echo reply",
    (8, None): "echo request",
    (3, 0): "net unreachable",
    (3, 1): "host unreachable",
    (3, 2): "protocol unreachable",
    (3, 3): "port unreachable",
    (3, 4): "fragmentation needed",
    (3, 13): "administratively prohibited",
    (11, 0): "time exceeded in transit",
    (11, 1): "fragment reassembly time exceeded",
    (13, None): "timestamp request",
    (14, None): "timestamp reply",
}
ICMP6_NAMES = {
    (128, None): "echo request",
    (129, None): "echo reply",
    (1, 0): "no route",
    (1, 1): "administratively prohibited",
    (1, 3): "address unreachable",
    (1, 4): "port unreachable",
    (2, None): "packet too big",
    (3, 0): "hop limit exceeded",
    (133, None): "router solicitation",
    (134, None): "router advertisement",
    (135, None): "neighbor solicitation",
    (136, None): "neighbor advertisement",
    (137, None): "redirect",
    (143, None): "multicast listener report v2",
}
ICMP_ECHO = {(4, 8), (4, 0), (6, 128), (6, 129)}
ICMP_ERRORS = {(4, 3), (4, 11), (4, 12), (6, 1), (6, 2), (6, 3), (6, 4)}
ND_TYPES = range(133, 138)

_HEX_VALUE = re.compile(r"0x[0-9a-f]+")
_CHECKSUM_PROBLEM = re.compile(r"^(IPv4 header|TCP|UDP|ICMP|ICMPv6) checksum 0x")


# --------------------------------------------------------------------------- mapping


class Mapper:
    """Canonical names for the values that differ between runs, by first appearance."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._maps: dict[str, dict[Any, str]] = {}
        self.relays: set[tuple[str, int]] = set()
        self.tcp_bases: dict[tuple[str, int, str, int], int] = {}

    def token(self, kind: str, value: Any) -> str:
        table = self._maps.setdefault(kind, {})
        if value not in table:
            table[value] = f"{kind}{len(table) + 1}"
        return table[value]

    def port(self, port: int) -> str:
        return str(port) if self.profile.keeps_port(port) else self.token("P", port)

    def addr(self, text: str) -> str:
        return self.profile.address(text)

    def endpoint(self, addr: str, port: int) -> str:
        """tcpdump's ``ADDR.PORT`` with canonical names (also for SOCKS5 payloads)."""
        try:
            canonical = str(ipaddress.ip_address(addr))
        except ValueError:
            canonical = addr  # a domain name in a SOCKS5 request
        return f"{self.addr(canonical)}.{self.port(port)}"

    def note_relay(self, addr: str, port: int) -> None:
        self.relays.add((str(ipaddress.ip_address(addr)), port))

    def ip_id(self, value: int) -> str:
        if self.profile.masked("ip.id"):
            return "*"
        return "0" if value == 0 else self.token("I", value)

    def mac(self, raw: bytes) -> str:
        if raw == b"\xff" * MAC_LEN or raw[0] & 1:  # broadcast / multicast: derived, keep
            return ":".join(f"{b:02x}" for b in raw)
        return self.token("M", raw)

    def ts(self, value: int) -> str:
        if self.profile.masked("tcp.ts"):
            return "*"
        return "0" if value == 0 else self.token("T", value)


@dataclass(frozen=True, slots=True)
class _Ends:
    """Raw endpoints of a packet, before any mapping."""

    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    ident: int | None = None

    def key(self) -> tuple[Any, ...]:
        if self.sport is not None:
            return (self.proto, frozenset({(self.src, self.sport), (self.dst, self.dport)}))
        return (self.proto, frozenset({self.src, self.dst}), self.ident)


# --------------------------------------------------------------------------- results


@dataclass
class TcpSegment:
    """What the semantic tier needs of one TCP segment."""

    direction: str  # ">" from the flow's initiator, "<" back
    flags: int
    seq: int  # relative
    payload: bytes
    options: tuple[str, ...]  # option names, MSS with its value (SYN/SYN-ACK only matter)
    retransmission: bool


@dataclass
class CanonPacket:
    frame: int  # 1-based frame number in the pcap (for humans; never compared)
    flow: int
    line: str
    checksum: str  # ok | partial | bad | unverified | none
    fields: dict[str, Any]
    tcp: TcpSegment | None = None
    hidden: bool = False  # dropped by a mask (retransmissions, pure ACKs)


@dataclass
class Flow:
    number: int
    proto: str
    header: str
    initiator: tuple[str, int | None]
    ends: _Ends | None = None
    jobs: list[Callable[[], None]] = field(default_factory=list, repr=False)
    """Renderers of this flow's packets, run flow by flow (see canonicalise)."""
    packets: list[CanonPacket] = field(default_factory=list)
    streams: dict[str, Stream] = field(default_factory=dict)
    next_seq: dict[str, int] = field(default_factory=dict)
    sent: dict[str, set[tuple[int, int, int]]] = field(default_factory=dict)
    socks: SocksSession | None = None


@dataclass
class Trace:
    """The canonical form of one capture."""

    profile: Profile
    linktype: int
    packets: list[CanonPacket]
    flows: list[Flow]

    @property
    def bad_checksums(self) -> int:
        return sum(1 for p in self.packets if p.checksum == "bad")

    def text(self) -> str:
        """The strict tier's text: per flow, one line a packet (masked ones left out)."""
        lines = [f"bad checksums: {self.bad_checksums}"]
        for flow in self.flows:
            lines.append(f"flow {flow.number}: {flow.header}")
            lines += [f"  {p.line}" for p in flow.packets if not p.hidden]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- helpers


def _flags_letters(flags: int) -> str:
    return "".join(c for bit, c in enumerate(TCP_LETTERS) if flags & (1 << bit))


def _tcpdump_flags(flags: int) -> str:
    return "".join(c for bit, c in TCPDUMP_FLAGS if flags & bit) or "none"


def _icmp_name(version: int, icmp_type: int, code: int) -> str:
    names = ICMP_NAMES if version == 4 else ICMP6_NAMES
    return (
        names.get((icmp_type, code))
        or names.get((icmp_type, None))
        or (f"type {icmp_type} code {code}")
    )


def _checksum_label(problem: str) -> str:
    match = _CHECKSUM_PROBLEM.match(problem)
    if match:
        proto = match.group(1).replace("IPv4 header", "ip").lower()
        return f"bad {proto} cksum"
    return _HEX_VALUE.sub("*", problem)


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack("!H", data[at : at + 2])[0])


def _proto_name(version: int, proto: int) -> str:
    return {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp6"}.get(
        proto, f"ip-proto-{proto}"
    )


def _ends_of(ip: IpPacket) -> _Ends:
    """Raw flow endpoints of a decoded IP packet (also used on ICMP quotes)."""
    proto = _proto_name(ip.version, ip.protocol)
    l4 = ip.l4 if ip.complete else ip.data[ip.header_len :]
    if ip.fragmented:
        return _Ends(f"{proto}-fragment", ip.src, ip.dst)
    if ip.protocol in (PROTO_TCP, PROTO_UDP) and len(l4) >= 4:
        return _Ends(proto, ip.src, ip.dst, _u16(l4, 0), _u16(l4, 2))
    if (
        (ip.version, l4[0] if l4 else -1) in ICMP_ECHO
        and len(l4) >= ICMP_HEADER
        and (ip.protocol in (PROTO_ICMP, PROTO_ICMPV6))
    ):
        return _Ends(proto, ip.src, ip.dst, ident=_u16(l4, 4))
    return _Ends(proto, ip.src, ip.dst)


# --------------------------------------------------------------------------- the normaliser


class _Normaliser:
    def __init__(self, profile: Profile, linktype: int) -> None:
        self.profile = profile
        self.linktype = linktype
        self.names = Mapper(profile)
        self.flows: dict[tuple[Any, ...], Flow] = {}
        self.packets: list[CanonPacket] = []

    # -- flows ------------------------------------------------------------------------

    def _flow(self, key: tuple[Any, ...], ends: _Ends) -> Flow:
        flow = self.flows.get(key)
        if flow is None:
            flow = Flow(len(self.flows) + 1, ends.proto, "", (ends.src, ends.sport), ends)
            self.flows[key] = flow
        return flow

    def _misc_flow(self, name: str) -> Flow:
        key = (name,)
        flow = self.flows.get(key)
        if flow is None:
            flow = Flow(len(self.flows) + 1, name, name, ("", None))
            self.flows[key] = flow
        return flow

    def _header(self, ends: _Ends) -> str:
        if ends.sport is not None:
            src = self.names.endpoint(ends.src, ends.sport)
            dst = self.names.endpoint(ends.dst, ends.dport or 0)
        else:
            src, dst = self.names.addr(ends.src), self.names.addr(ends.dst)
        header = f"{ends.proto} {src} > {dst}"
        if ends.ident is not None:
            header += f" id {self.names.token('E', ends.ident)}"
        return header

    # -- frames -----------------------------------------------------------------------

    def add(self, frame: Frame) -> None:
        """Put a frame in its flow; it is rendered later, flow by flow (see finish)."""
        data = frame.data
        macs: tuple[bytes, bytes] | None = None
        if frame.linktype == LINKTYPE_ETHERNET and len(data) >= ETH_HEADER:
            macs = (data[6:12], data[0:6])
            if _u16(data, 12) == ETHERTYPE_ARP:
                flow = self._misc_flow("arp")
                flow.jobs.append(partial(self._arp, frame, macs, data[ETH_HEADER:], flow))
                return
        packet = ip_bytes(frame)
        why = "not IP"
        if packet is not None:
            try:
                ip = decode_ip(packet)
            except DecodeError as exc:
                why, data = str(exc), packet
            else:
                flow = self._ip_flow(ip)
                flow.jobs.append(partial(self._ip, frame, macs, ip, flow))
                return
        flow = self._misc_flow("undecodable")
        flow.jobs.append(partial(self._undecodable, frame, macs, data, why, flow))

    def finish(self) -> None:
        """Render flow by flow: canonical names are handed out in flow order, then
        capture order within a flow -- so they depend only on what is compared, never on
        how flows interleaved, while a value two flows share keeps one name."""
        for flow in self.flows.values():
            if flow.ends is not None:
                flow.header = self._header(flow.ends)
            for job in flow.jobs:
                job()
            flow.jobs.clear()
        self.packets.sort(key=lambda p: p.frame)

    def _prefix(self, macs: tuple[bytes, bytes] | None) -> str:
        if macs is None or self.profile.masked("eth"):
            return ""
        return f"{self.names.mac(macs[0])} > {self.names.mac(macs[1])}, "

    def _emit(
        self,
        frame: Frame,
        flow: Flow,
        line: str,
        checksum: str,
        fields: dict[str, Any],
        tcp: TcpSegment | None = None,
        hidden: bool = False,
    ) -> None:
        fields.setdefault("flow", flow.number)
        fields.setdefault("checksum", checksum)
        packet = CanonPacket(frame.index, flow.number, line, checksum, fields, tcp, hidden)
        flow.packets.append(packet)
        self.packets.append(packet)

    def _undecodable(
        self, frame: Frame, macs: tuple[bytes, bytes] | None, data: bytes, why: str, flow: Flow
    ) -> None:
        reason = _HEX_VALUE.sub("*", why)
        line = f"{self._prefix(macs)}undecodable ({reason}) | {describe_bytes(data)}"
        self._emit(frame, flow, line, "none", {"proto": "undecodable", "len": len(data)})

    def _arp(self, frame: Frame, macs: tuple[bytes, bytes] | None, data: bytes, flow: Flow) -> None:
        from scapy.layers.l2 import ARP

        prefix = self._prefix(macs)
        arp = ARP(data)
        if arp.op == ARP_REQUEST:
            text = f"ARP, Request who-has {arp.pdst} tell {arp.psrc}"
        elif arp.op == ARP_REPLY:
            mac = self.names.mac(bytes.fromhex(arp.hwsrc.replace(":", "")))
            text = f"ARP, Reply {arp.psrc} is-at {mac}"
        else:
            text = f"ARP, op {arp.op}"
        self._emit(frame, flow, prefix + text, "none", {"proto": "arp"})

    # -- IP ---------------------------------------------------------------------------

    def _checksum(self, ip: IpPacket) -> tuple[str, list[str]]:
        verdict = verify_checksums(ip.data, allow_offload=True)
        notes = [f"[{_checksum_label(p)}]" for p in verdict.problems]
        if verdict.offloaded:
            if _proto_name(ip.version, ip.protocol) not in self.profile.offloaded:
                notes.append(f"[partial {_proto_name(ip.version, ip.protocol)} cksum]")
                return "bad", notes
            return ("bad" if notes else "partial"), notes
        if verdict.problems:
            return "bad", notes
        if verdict.unverified:
            notes += [f"[unverified: {_HEX_VALUE.sub('*', u)}]" for u in verdict.unverified]
            return "unverified", notes
        return "ok", notes

    def _ip_meta(self, ip: IpPacket) -> str:
        """``(id I1, ttl 64, DF)`` / ``(flow L1, hlim 64, ext [frag ...])``."""
        data = ip.data
        masked_ttl = self.profile.masked("ip.ttl")
        if ip.version == 4:
            ident = self.names.ip_id(_u16(data, 4))
            flags_frag = _u16(data, 6)
            parts = [f"id {ident}", f"ttl {'*' if masked_ttl else data[8]}"]
            if data[1]:
                parts.append(f"tos 0x{data[1]:02x}")
            if flags_frag & IPV4_DF:
                parts.append("DF")
            if flags_frag & IPV4_MF:
                parts.append("MF")
            if flags_frag & IPV4_OFFSET:
                parts.append(f"frag off {(flags_frag & IPV4_OFFSET) * FRAGMENT_UNIT}")
            if ip.header_len > IPV4_MIN_HEADER:
                parts.append(f"options {data[IPV4_MIN_HEADER : ip.header_len].hex()}")
            return "(" + ", ".join(parts) + ")"
        label = (int.from_bytes(data[1:4], "big")) & 0xFFFFF
        tclass = ((data[0] & 0x0F) << 4) | (data[1] >> 4)
        flow = (
            "*"
            if self.profile.masked("ip6.flow")
            else ("0" if label == 0 else self.names.token("L", label))
        )
        parts = [f"flow {flow}", f"hlim {'*' if masked_ttl else data[7]}"]
        if tclass:
            parts.append(f"tc 0x{tclass:02x}")
        exts = self._ipv6_extensions(data)
        if exts:
            parts.append("ext [" + ",".join(exts) + "]")
        return "(" + ", ".join(parts) + ")"

    def _ipv6_extensions(self, data: bytes) -> list[str]:
        names: list[str] = []
        nh, pos = data[6], IPV6_HEADER
        while nh in EXT_NAMES and len(data) >= pos + 8:
            if nh == IPV6_EXT_FRAGMENT:
                frag = _u16(data, pos + 2)
                ident = self.names.ip_id(int.from_bytes(data[pos + 4 : pos + 8], "big"))
                more = " more" if frag & 1 else ""
                names.append(f"frag id {ident} off {(frag >> 3) * FRAGMENT_UNIT}{more}")
                size = 8
            elif nh == IPV6_EXT_AH:  # AH counts 4-byte units
                names.append("ah")
                size = (data[pos + 1] + 2) * 4
            else:
                names.append(EXT_NAMES[nh])
                size = (data[pos + 1] + 1) * 8
            nh, pos = data[pos], pos + size
        return names

    def _ip_flow(self, ip: IpPacket) -> Flow:
        """The flow of a packet; an ICMP error belongs to the flow of what it quotes."""
        ends = _ends_of(ip)
        l4 = ip.l4
        if (
            not ip.fragmented
            and ip.protocol in (PROTO_ICMP, PROTO_ICMPV6)
            and len(l4) > ICMP_HEADER
            and (ip.version, l4[0]) in ICMP_ERRORS
        ):
            quoted = self._quoted_ends(l4[ICMP_HEADER:])
            if quoted is not None:
                return self._flow(quoted.key(), quoted)
        return self._flow(ends.key(), ends)

    def _ip(self, frame: Frame, macs: tuple[bytes, bytes] | None, ip: IpPacket, flow: Flow) -> None:
        prefix = self._prefix(macs)
        checksum, notes = self._checksum(ip)
        meta = self._ip_meta(ip)
        ends = _ends_of(ip)
        fields: dict[str, Any] = {"ip.version": ip.version, "proto": ends.proto}
        family = "IP" if ip.version == 4 else "IP6"
        l4 = ip.l4
        if not ip.complete:
            notes.append(f"[truncated: {len(ip.data)} of {ip.total_len} bytes]")
        if ip.error:
            notes.append(f"[{_HEX_VALUE.sub('*', ip.error)}]")
        tcp: TcpSegment | None = None
        hidden = False
        head = f"{self.names.addr(ip.src)} > {self.names.addr(ip.dst)}"
        if ip.fragmented:
            body = f"{ends.proto} | {describe_bytes(l4, masked=self.profile.masked('payload'))}"
        elif ip.protocol == PROTO_TCP and len(l4) >= TCP_MIN_HEADER:
            head = self._ports(ip, ends)
            body, tcp, hidden = self._tcp(ip, l4, flow, fields)
        elif ip.protocol == PROTO_UDP and len(l4) >= UDP_HEADER:
            head = self._ports(ip, ends)
            body = self._udp(ip, l4, fields)
        elif ip.protocol in (PROTO_ICMP, PROTO_ICMPV6) and len(l4) >= ICMP_MIN_LEN:
            body = self._icmp(ip, l4, fields)
        else:
            name = ends.proto if ip.protocol >= 0 else "unknown"
            body = f"{name} | {describe_bytes(l4, masked=self.profile.masked('payload'))}"
        # Headers first, then checksum notes, then what the payload is: "... | payload".
        l4_text, _, payload_text = body.partition(" | ")
        line = f"{prefix}{family} {head}: {l4_text} {meta}"
        if notes:
            line += " " + " ".join(notes)
        if payload_text:
            line += f" | {payload_text}"
        fields.setdefault("len", len(l4))
        self._emit(frame, flow, line, checksum, fields, tcp, hidden)

    def _ports(self, ip: IpPacket, ends: _Ends) -> str:
        return (
            f"{self.names.endpoint(ip.src, ends.sport or 0)} > "
            f"{self.names.endpoint(ip.dst, ends.dport or 0)}"
        )

    # -- TCP --------------------------------------------------------------------------

    def _tcp(
        self, ip: IpPacket, l4: bytes, flow: Flow, fields: dict[str, Any]
    ) -> tuple[str, TcpSegment | None, bool]:
        from scapy.layers.inet import TCP

        sport, dport = _u16(l4, 0), _u16(l4, 2)
        seq, ack = struct.unpack("!II", l4[4:12])
        offset = (l4[12] >> 4) * 4
        flags = l4[13]
        window = _u16(l4, 14)
        fields["tcp.flags"] = _flags_letters(flags)
        fields["tcp.window"] = window
        if offset < TCP_MIN_HEADER or offset > len(l4):
            fields["len"] = len(l4)
            return (f"tcp, bad data offset {offset} | {describe_bytes(l4)}", None, False)
        payload = l4[offset:]
        fields["len"] = len(payload)
        direction = ">" if (ip.src, sport) == flow.initiator else "<"
        mine = (ip.src, sport, ip.dst, dport)
        theirs = (ip.dst, dport, ip.src, sport)
        bases = self.names.tcp_bases
        if flags & SYN and mine in bases and bases[mine] != seq:
            # A new connection on the same 4-tuple: number it from its own ISN.
            bases[mine] = seq
            if not flags & ACK:
                bases.pop(theirs, None)
        base = bases.setdefault(mine, seq)
        rel_seq = (seq - base) % SEQ_SPACE
        parts = [f"Flags [{_tcpdump_flags(flags)}]"]
        seq_len = len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if payload:
            parts.append(f"seq {rel_seq}:{(rel_seq + len(payload)) % SEQ_SPACE}")
        elif flags & (SYN | FIN | RST):
            parts.append(f"seq {rel_seq}")
        if flags & ACK:
            rel_ack = (ack - bases.setdefault(theirs, ack)) % SEQ_SPACE
            parts.append(f"ack {rel_ack}")
        parts.append(f"win {'*' if self.profile.masked('tcp.window') else window}")
        option_names: list[str] = []
        if offset > TCP_MIN_HEADER:
            try:
                options = TCP(l4[:offset]).options
            except Exception:  # scapy raises many kinds on garbage; say so, go on
                options = [("malformed", None)]
            rendered, option_names = self._tcp_options(options, theirs)
            if not self.profile.masked("tcp.options"):
                parts.append(f"options [{rendered}]")
        parts.append(f"length {len(payload)}")

        sent = flow.sent.setdefault(direction, set())
        ident = (rel_seq, seq_len, flags & (SYN | FIN | RST))
        retransmission = seq_len > 0 and ident in sent
        sent.add(ident)
        fields["retransmission"] = "yes" if retransmission else "no"
        items = self._tcp_payload(
            flow, direction, rel_seq, payload, retransmission, ip, sport, dport, flags
        )
        text = ", ".join(parts)
        if items:
            text += " | " + "; ".join(items)
        hidden = (retransmission and self.profile.masked("tcp.retransmissions")) or (
            seq_len == 0 and not flags & RST and self.profile.masked("tcp.pure-acks")
        )
        segment = TcpSegment(
            direction, flags, rel_seq, payload, tuple(option_names), retransmission
        )
        return text, segment, hidden

    def _tcp_options(
        self, options: Sequence[tuple[str, Any]], theirs: tuple[str, int, str, int]
    ) -> tuple[str, list[str]]:
        """(tcpdump-like option text, semantic option names)."""
        rendered: list[str] = []
        names: list[str] = []
        for name, value in options:
            if name == "MSS":
                rendered.append(f"mss {value}")
                names.append(f"mss {value}")
            elif name == "SAckOK":
                rendered.append("sackOK")
                names.append("sackOK")
            elif name == "Timestamp":
                val, ecr = value
                rendered.append(f"TS val {self.names.ts(val)} ecr {self.names.ts(ecr)}")
                names.append("TS")
            elif name == "WScale":
                rendered.append(f"wscale {value}")
                names.append("wscale")
            elif name == "NOP":
                rendered.append("nop")
            elif name == "EOL":
                rendered.append("eol")
            elif name == "SAck":
                base = self.names.tcp_bases.get(theirs, 0)
                edges = [(v - base) % SEQ_SPACE for v in value]
                pairs = ",".join(f"{a}:{b}" for a, b in zip(edges[::2], edges[1::2], strict=False))
                rendered.append(f"sack {pairs}")
                names.append("sack")
            else:
                label = f"opt-{name}" if isinstance(name, int) else str(name).lower()
                rendered.append(label)
                names.append(label)
        return ",".join(rendered), names

    def _tcp_payload(
        self,
        flow: Flow,
        direction: str,
        rel_seq: int,
        payload: bytes,
        retransmission: bool,
        ip: IpPacket,
        sport: int,
        dport: int,
        flags: int,
    ) -> list[str]:
        masked = self.profile.masked("payload")
        if flags & SYN:
            flow.next_seq[direction] = 1
        if not payload:
            return []
        if retransmission:
            return [f"retransmission {describe_bytes(payload, masked=masked)}"]
        stream = flow.streams.get(direction)
        if stream is None:
            stream = self._new_stream(flow, direction, ip, sport, dport)
        expected = flow.next_seq.get(direction, rel_seq)
        items: list[str] = []
        new = payload
        if rel_seq > expected and rel_seq - expected < SEQ_SPACE // 2:
            items.append(f"(gap of {rel_seq - expected} bytes)")
        elif rel_seq < expected:
            overlap = expected - rel_seq
            items.append(f"(overlaps {min(overlap, len(payload))} bytes already seen)")
            new = payload[overlap:]
        items += stream.feed(new)
        flow.next_seq[direction] = max(expected, rel_seq + len(payload))
        return items

    def _new_stream(
        self, flow: Flow, direction: str, ip: IpPacket, sport: int, dport: int
    ) -> Stream:
        """A SOCKS5 decoder if the flow is to/from a SOCKS port, raw otherwise."""
        masked = self.profile.masked("payload")
        socks = self.profile.socks5_ports
        stream: Stream
        if masked or not (sport in socks or dport in socks):
            stream = RawStream(masked)
        else:
            if flow.socks is None:
                flow.socks = SocksSession(self.names, ip.dst if dport in socks else ip.src)
            to_server = dport in socks
            stream = SocksClientStream(flow.socks) if to_server else SocksServerStream(flow.socks)
        flow.streams[direction] = stream
        return stream

    # -- UDP / ICMP -------------------------------------------------------------------

    def _udp(self, ip: IpPacket, l4: bytes, fields: dict[str, Any]) -> str:
        sport, dport, length = _u16(l4, 0), _u16(l4, 2), _u16(l4, 4)
        payload = l4[UDP_HEADER:length] if UDP_HEADER <= length <= len(l4) else l4[UDP_HEADER:]
        fields["len"] = len(payload)
        masked = self.profile.masked("payload")
        relays = self.names.relays
        if (ip.dst, dport) in relays or (ip.src, sport) in relays:
            desc = describe_socks_udp(payload, self.names, self.profile.dns_ports, masked)
        else:
            desc = describe_bytes(payload, masked=masked)
            if not masked and (sport in self.profile.dns_ports or dport in self.profile.dns_ports):
                desc += f" {describe_dns(payload)}"
        return f"UDP, length {len(payload)} | {desc}"

    def _quoted_ends(self, quote: bytes) -> _Ends | None:
        try:
            return _ends_of(decode_ip(quote))
        except (DecodeError, IndexError):
            return None

    def _quote_text(self, quote: bytes) -> str:
        try:
            inner = decode_ip(quote)
        except DecodeError as exc:
            return f"undecodable quote ({exc})"
        ends = _ends_of(inner)
        if ends.sport is not None:
            text = (
                f"{self.names.endpoint(inner.src, ends.sport)} > "
                f"{self.names.endpoint(inner.dst, ends.dport or 0)}"
            )
        else:
            text = f"{self.names.addr(inner.src)} > {self.names.addr(inner.dst)}"
        return f"{ends.proto} {text}, {len(quote)} bytes quoted"

    def _icmp(self, ip: IpPacket, l4: bytes, fields: dict[str, Any]) -> str:
        icmp_type, code = l4[0], l4[1]
        family = "ICMP" if ip.version == 4 else "ICMP6"
        fields["icmp.type"], fields["icmp.code"] = icmp_type, code
        text = f"{family} {_icmp_name(ip.version, icmp_type, code)}"
        masked = self.profile.masked("payload")
        if (ip.version, icmp_type) in ICMP_ECHO and len(l4) >= ICMP_HEADER:
            data = l4[ICMP_HEADER:]
            fields["len"] = len(data)
            ident = self.names.token("E", _u16(l4, 4))
            return f"{text}, id {ident}, seq {_u16(l4, 6)}, length {len(data)} | " + describe_bytes(
                data, masked=masked
            )
        if (ip.version, icmp_type) in ICMP_ERRORS and len(l4) > ICMP_HEADER:
            frag_needed = (ip.version, icmp_type, code) == (4, ICMP4_UNREACH, ICMP4_FRAG_NEEDED)
            too_big = (ip.version, icmp_type) == (6, ICMP6_TOO_BIG)
            extra = f", mtu {_u16(l4, 6)}" if frag_needed or too_big else ""
            return f"{text}{extra} | quoting {self._quote_text(l4[ICMP_HEADER:])}"
        if ip.version == 6 and icmp_type in ND_TYPES:
            return text + self._nd_details(l4)
        return f"{text} | {describe_bytes(l4[4:], masked=masked)}"

    def _nd_details(self, l4: bytes) -> str:
        from scapy.layers import inet6

        found = inet6.icmp6typescls.get(l4[0])  # class names (str) in scapy's table
        cls = getattr(inet6, found, None) if isinstance(found, str) else found
        if cls is None:
            return ""
        parsed = cls(l4)
        parts: list[str] = []
        target = getattr(parsed, "tgt", None)
        if target is not None:
            parts.append(f"tgt {self.names.addr(str(target))}")
        layer = parsed.payload
        while layer is not None and layer.name != "NoPayload":
            lladdr = getattr(layer, "lladdr", None)
            if isinstance(lladdr, str):
                parts.append(f"lladdr {self.names.mac(bytes.fromhex(lladdr.replace(':', '')))}")
            layer = layer.payload if layer.payload is not None else None
        return (", " + ", ".join(parts)) if parts else ""


def canonicalise(path: str | Path, profile: Profile | None = None) -> Trace:
    """The canonical trace of a pcap/pcapng file under ``profile`` (strict default)."""
    chosen = profile or Profile()
    frames: Iterable[Frame] = read_pcap(path)
    normaliser: _Normaliser | None = None
    linktype = -1
    for frame in frames:
        if normaliser is None:
            linktype = frame.linktype
            normaliser = _Normaliser(chosen, linktype)
        normaliser.add(frame)
    if normaliser is None:
        return Trace(chosen, linktype, [], [])
    normaliser.finish()
    return Trace(chosen, linktype, normaliser.packets, list(normaliser.flows.values()))
