"""Flows and packets for the kernel NAT's tests: a stack holding some flows, the map
entries derived from it, and generated packets around those flows.

The packets are what the program meets on a TUN's egress -- the app's segments of held
flows, the listener's answers, strangers -- intact or bent: any flags (SYNs included),
TCP options, IPv4 options, IPv6 extension headers, fragments, other protocols, lying
lengths and data offsets, arbitrary checksum fields, cut short.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

from ztun.kernelnat.model import FlowEntry, entries_for
from ztun.stack import SystemStack, TcpNatTable, TcpSession
from ztun.wire import SYN, TcpOptions, build_tcp

INET4 = ipaddress.IPv4Interface("198.18.0.1/30")
INET6 = ipaddress.IPv6Interface("fd00:5a:7e::1/126")
LISTEN4, LISTEN6 = 7001, 7002
APP4 = [ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("10.20.0.2")]
APP6 = [ipaddress.IPv6Address("fd00:5a:7e::1"), ipaddress.IPv6Address("2001:db8:1::2")]
DST4 = [ipaddress.IPv4Address("93.184.216.34"), ipaddress.IPv4Address("198.51.100.7")]
DST6 = [ipaddress.IPv6Address("2001:db8:ffff::80"), ipaddress.IPv6Address("2606:4700::1")]
#: (app index, app port, destination index, destination port) of the held flows.
FLOWS = [(0, 40000, 0, 443), (1, 51234, 1, 80), (0, 7, 1, 65535), (1, 65535, 0, 1)]


@dataclass
class Held:
    """A stack holding FLOWS in both families, and the map entries of every session."""

    stack: SystemStack
    sessions: list[TcpSession] = field(default_factory=list)

    def nat(self, version: int) -> TcpNatTable:
        nat = self.stack.nat4 if version == 4 else self.stack.nat6
        assert nat is not None
        return nat

    def flows(self) -> dict[bytes, FlowEntry]:
        found: dict[bytes, FlowEntry] = {}
        for session in self.sessions:
            found.update(entries_for(session, self.nat(session.version)))
        return found


def held_flows() -> Held:
    stack = SystemStack(inet4=INET4, inet6=INET6, listen_port4=LISTEN4, listen_port6=LISTEN6)
    held = Held(stack)
    for apps, dsts in ((APP4, DST4), (APP6, DST6)):
        for app, sport, dst, dport in FLOWS:
            syn = build_tcp(apps[app], dsts[dst], sport, dport, seq=1, flags=SYN)
            assert stack.receive(memoryview(bytearray(syn)), 0.0) is not None
            nat = held.nat(apps[app].version)
            session = nat.by_flow((apps[app].packed, sport, dsts[dst].packed, dport))
            assert session is not None
            held.sessions.append(session)
    return held


# --------------------------------------------------------------------------- packets

_options = st.sampled_from(
    [
        TcpOptions(),
        TcpOptions(timestamps=(1, 2)),
        TcpOptions(sack_blocks=((5, 9), (20, 30))),
        TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamps=(3, 4)),
    ]
)


@st.composite
def flow_packets(draw: st.DrawFn, held: Held) -> bytes:
    """A segment of one of `held`'s flows (either direction) or of a near miss, built
    whole and right; `bent` may then change it."""
    session = draw(st.sampled_from(held.sessions))
    nat = held.nat(session.version)
    direction = draw(st.sampled_from(["app", "answer", "stranger"]))
    if direction == "app":
        src, dst = session.client_addr, session.dst_addr
        sport, dport = session.client_port, session.dst_port
    elif direction == "answer":
        src, dst = nat.server_addr, nat.peer_addr
        sport, dport = nat.listen_port, session.nat_port
    else:  # one field off a held key
        src, dst = session.client_addr, session.dst_addr
        sport, dport = session.client_port, (session.dst_port + 1) & 0xFFFF
    return bytes(
        build_tcp(
            src,
            dst,
            sport,
            dport,
            seq=draw(st.integers(0, 2**32 - 1)),
            ack=draw(st.integers(0, 2**32 - 1)),
            flags=draw(st.integers(0, 255)),
            window=draw(st.integers(0, 65535)),
            options=draw(_options),
            payload=draw(st.binary(max_size=64)),
        )
    )


def ipv4_with_options(packet: bytes) -> bytes:
    """The same IPv4 segment with a 4-byte IP option (router alert), lengths and header
    checksum made right."""
    ip = IP(packet)
    ip.options = [b"\x94\x04\x00\x00"]
    del ip.ihl, ip.len, ip.chksum
    return bytes(ip)


def ipv6_with_extension(packet: bytes, hop_by_hop: bool) -> bytes:
    """The same IPv6 segment behind a hop-by-hop or destination options header."""
    ip = IPv6(packet)
    tcp = ip.payload
    ip.remove_payload()
    ext = IPv6ExtHdrHopByHop() if hop_by_hop else IPv6ExtHdrDestOpt()
    del ip.nh, ip.plen
    return bytes(ip / ext / tcp)


@st.composite
def bent(draw: st.DrawFn, packet: bytes) -> bytes:
    """`packet`, maybe moved behind options / extension headers, maybe with a few
    bytes changed (a lying length, data offset, fragment field, protocol, checksum),
    maybe cut short."""
    kind = draw(st.sampled_from(["intact", "options", "edits", "cut"]))
    if kind == "options":
        if packet[0] >> 4 == 4:
            return ipv4_with_options(packet)
        return ipv6_with_extension(packet, draw(st.booleans()))
    if kind == "edits":
        buf = bytearray(packet)
        for _ in range(draw(st.integers(1, 3))):
            offset = draw(st.integers(0, min(len(buf) - 1, 80)))
            buf[offset] = draw(st.integers(0, 255))
        return bytes(buf)
    if kind == "cut":
        return packet[: draw(st.integers(0, len(packet)))]
    return packet


@st.composite
def egress_packets(draw: st.DrawFn, held: Held) -> bytes:
    """Anything the program may meet: mostly bent flow packets, sometimes junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    return draw(bent(draw(flow_packets(held))))


def pure_syn(packet: bytes) -> bool:
    l4 = 20 if packet[0] >> 4 == 4 else 40
    return packet[l4 + 13] & 0x12 == 0x02


def set_partial_checksum(packet: bytes) -> bytes:
    """The segment as the kernel's TCP hands it to a CHECKSUM_PARTIAL device: the
    checksum field holds the folded, uncomplemented pseudo-header sum."""
    from ztun.wire.checksum import pseudo_header_sum

    buf = bytearray(packet)
    if buf[0] >> 4 == 4:
        src, dst, l4 = bytes(buf[12:16]), bytes(buf[16:20]), 20
    else:
        src, dst, l4 = bytes(buf[8:24]), bytes(buf[24:40]), 40
    struct.pack_into("!H", buf, l4 + 16, pseudo_header_sum(src, dst, 6, len(buf) - l4))
    return bytes(buf)


def scapy_tcp4(src: str, dst: str, sport: int, dport: int, flags: str = "A") -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))
