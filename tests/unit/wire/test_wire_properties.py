"""Cross-cutting properties: NAT rewrites, fuzzing, and scapy as an independent oracle."""

from __future__ import annotations

import contextlib
import pickle
from ipaddress import IPv4Address, IPv6Address

import pytest
import wire_vectors as V
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Packet
from wire_helpers import addr_pairs, payloads, touch_everything, u16

from ztun.wire import (
    IPPROTO_TCP,
    Ipv4Packet,
    Ipv6Packet,
    Malformed,
    TcpOptions,
    TcpPacket,
    Truncated,
    UdpPacket,
    WireError,
    build_icmp_echo,
    build_tcp,
    build_udp,
    checksum_delta,
    parse_ip,
)

VECTORS = [value for name, value in sorted(vars(V).items()) if name.isupper()]


# -- NAT: incremental update == full recompute ----------------------------------------


def l4_view(ip_buf: bytearray) -> tuple[Ipv4Packet | Ipv6Packet, TcpPacket | UdpPacket]:
    ip = parse_ip(ip_buf)
    offset = len(ip.buf) - len(ip.payload)
    l4 = ip.buf[offset:]
    protocol = ip.protocol if isinstance(ip, Ipv4Packet) else ip.next_header
    return ip, (TcpPacket.checked(l4) if protocol == IPPROTO_TCP else UdpPacket.checked(l4))


@given(
    addrs=addr_pairs,
    new_addrs=addr_pairs,
    ports=st.tuples(u16, u16, u16, u16),
    payload=payloads,
    tcp=st.booleans(),
    which=st.sampled_from(["src", "dst", "both"]),
)
def test_nat_incremental_equals_recompute(
    addrs: tuple[bytes, bytes],
    new_addrs: tuple[bytes, bytes],
    ports: tuple[int, int, int, int],
    payload: bytes,
    tcp: bool,
    which: str,
) -> None:
    """The stack's per-packet rewrite (address + port, RFC 1624) equals a recompute.

    Deltas are computed once per "flow" from (address + port) before/after, as the
    NAT table would store them, then applied with adjust_checksum.
    """
    src, dst = addrs
    new_src, new_dst = new_addrs
    if len(new_src) != len(src):
        new_src, new_dst = (new_src * 4)[: len(src)], (new_dst * 4)[: len(src)]
    sport, dport, new_sport, new_dport = ports
    if tcp:
        buf = build_tcp(src, dst, sport, dport, payload=payload, options=TcpOptions(mss=1400))
    else:
        buf = build_udp(src, dst, sport, dport, payload)
    ip, l4 = l4_view(buf)
    old = src + sport.to_bytes(2, "big") + dst + dport.to_bytes(2, "big")
    if which == "src":
        new_dst, new_dport = dst, dport
    elif which == "dst":
        new_src, new_sport = src, sport
    new = new_src + new_sport.to_bytes(2, "big") + new_dst + new_dport.to_bytes(2, "big")
    l4_delta = checksum_delta(old, new)  # precomputed per flow
    ip_delta = checksum_delta(src + dst, new_src + new_dst)

    ip.src, ip.dst = new_src, new_dst
    if isinstance(ip, Ipv4Packet):
        ip.adjust_checksum(ip_delta)
    l4.src_port, l4.dst_port = new_sport, new_dport
    l4.adjust_checksum(l4_delta)

    reference = bytearray(buf)
    ref_ip, ref_l4 = l4_view(reference)
    ref_l4.fill_checksum(new_src, new_dst)
    if isinstance(ref_ip, Ipv4Packet):
        ref_ip.fill_checksum()
    assert buf == reference  # checksums bit-identical, not merely "valid"
    assert l4.verify_checksum(new_src, new_dst)


# -- fuzzing: only WireError may escape -------------------------------------------------


@given(st.binary(max_size=120))
def test_garbage_raises_only_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        touch_everything(data)


@given(
    st.sampled_from([4, 6]),
    st.sampled_from([6, 17, 1, 58, 0, 44, 60, 43, 51]),
    st.binary(max_size=120),
)
def test_garbage_behind_valid_ip_header(version: int, proto: int, tail: bytes) -> None:
    """Plausible headers with garbage behind them reach the deeper parsers."""
    if version == 4:
        head = bytearray(b"\x45" + bytes(19))
        head[2:4] = (20 + len(tail)).to_bytes(2, "big")
        head[9] = proto
    else:
        head = bytearray(b"\x60" + bytes(39))
        head[4:6] = len(tail).to_bytes(2, "big")
        head[6] = proto
    with contextlib.suppress(WireError):
        touch_everything(bytes(head) + tail)


@settings(max_examples=300)
@given(st.sampled_from(VECTORS), st.data())
def test_mutated_vectors_raise_only_wire_errors(vector: bytes, data: st.DataObject) -> None:
    buf = bytearray(vector)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    with contextlib.suppress(WireError):
        touch_everything(buf[:cut])


@pytest.mark.parametrize("name", [n for n in sorted(vars(V)) if n.isupper()])
def test_every_vector_parses_cleanly(name: str) -> None:
    touch_everything(getattr(V, name))


def test_errors_carry_reason_and_pickle() -> None:
    for error in (Truncated(), Malformed("bad_ihl", "IHL 3")):
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error) and clone.reason == error.reason
        assert str(clone) == str(error)
        assert isinstance(clone, ValueError)
    assert str(Malformed("bad_ihl", "IHL 3")) == "bad_ihl: IHL 3"
    assert Truncated().reason == "truncated"


# -- scapy as an independent checksum oracle ---------------------------------------------


def rebuilt_by_scapy(buf: bytes) -> bytes:
    """Let scapy recompute every checksum (deleting a field makes scapy fill it)."""
    pkt: Packet = IP(buf) if buf[0] >> 4 == 4 else IPv6(buf)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            del pkt[layer].chksum
    if ICMPv6EchoRequest in pkt:
        del pkt[ICMPv6EchoRequest].cksum
    return bytes(pkt.__class__(bytes(pkt)))


v4_hosts = st.integers(1, (1 << 32) - 2).map(IPv4Address)
v6_hosts = st.integers(1, (1 << 128) - 1).map(IPv6Address)


@settings(max_examples=25, deadline=None)
@given(
    st.tuples(v4_hosts, v4_hosts) | st.tuples(v6_hosts, v6_hosts),
    u16,
    u16,
    payloads,
    st.sampled_from(["tcp", "udp", "echo"]),
)
def test_checksums_match_scapy(
    addrs: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address],
    sport: int,
    dport: int,
    payload: bytes,
    kind: str,
) -> None:
    src, dst = addrs
    if kind == "tcp":
        ours = build_tcp(src, dst, sport, dport, payload=payload, seq=sport * dport)
    elif kind == "udp":
        ours = build_udp(src, dst, sport, dport, payload)
    else:
        ours = build_icmp_echo(src, dst, sport, dport, payload)
    assert bytes(ours) == rebuilt_by_scapy(bytes(ours))


@settings(max_examples=25, deadline=None)
@given(st.tuples(v4_hosts, v4_hosts), u16, u16, payloads)
def test_scapy_packets_verify(
    addrs: tuple[IPv4Address, IPv4Address], sport: int, dport: int, payload: bytes
) -> None:
    """The other direction: packets scapy builds verify with our views."""
    src, dst = addrs
    raw = bytes(IP(src=str(src), dst=str(dst)) / TCP(sport=sport, dport=dport) / payload)
    ip = Ipv4Packet.checked(raw)
    assert ip.verify_checksum()
    assert TcpPacket.checked(ip.payload).verify_checksum(ip.src, ip.dst)
