"""ICMPv4 / ICMPv6 views and builders against what ping and the kernel put on the wire."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv6Address

import pytest
import wire_vectors as V

from ztun.wire import (
    IcmpPacket,
    Icmpv6Packet,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6Packet,
    Ipv6Repr,
    Truncated,
    WireError,
    build_icmp_echo,
    build_icmp_unreachable,
    checksum_delta,
    icmp,
    icmpv6,
    parse_ip,
)

A4, B4 = IPv4Address("10.99.0.1"), IPv4Address("10.99.0.2")
A6, B6 = IPv6Address("fd00:99::1"), IPv6Address("fd00:99::2")


def icmp4(data: bytes | bytearray) -> tuple[Ipv4Packet, IcmpPacket]:
    ip = Ipv4Packet.checked(bytearray(data))
    return ip, IcmpPacket.checked(ip.payload)


def icmp6(data: bytes | bytearray) -> tuple[Ipv6Packet, Icmpv6Packet]:
    ip = Ipv6Packet.checked(bytearray(data))
    _, offset = ip.upper_layer()
    return ip, Icmpv6Packet.checked(ip.buf[offset:])


def test_echo_v4_fields() -> None:
    _, req = icmp4(V.IPV4_ICMP_ECHO_REQUEST)
    _, rep = icmp4(V.IPV4_ICMP_ECHO_REPLY)
    assert (req.type, req.code, rep.type) == (icmp.ECHO_REQUEST, 0, icmp.ECHO_REPLY)
    assert (req.ident, req.seq) == (rep.ident, rep.seq) and req.seq == 1
    assert req.rest_of_header == (req.ident << 16) | req.seq
    assert len(req.data) == 16 and bytes(req.data) == bytes(rep.data)
    assert req.verify_checksum() and rep.verify_checksum()


def test_echo_v6_fields() -> None:
    ip, req = icmp6(V.IPV6_ICMP_ECHO_REQUEST)
    assert (req.type, req.code, req.seq) == (icmpv6.ECHO_REQUEST, 0, 1)
    assert req.verify_checksum(ip.src, ip.dst)
    assert not req.verify_checksum(ip.dst, ip.dst)  # the pseudo header matters


def test_build_echo_reply_v4_matches_kernel() -> None:
    """The kernel's echo reply: TTL 64, no DF (its ICMP socket never sets it)."""
    ip, reply = icmp4(V.IPV4_ICMP_ECHO_REPLY)
    built = build_icmp_echo(B4, A4, reply.ident, reply.seq, reply.data, reply=True)
    built_ip = Ipv4Packet.checked(built)
    assert bytes(built_ip.payload) == bytes(ip.payload)
    assert Ipv4Repr.parse(built_ip) == dataclasses.replace(Ipv4Repr.parse(ip), ident=0)


@pytest.mark.parametrize(
    ("name", "reply"), [("IPV6_ICMP_ECHO_REQUEST", False), ("IPV6_ICMP_ECHO_REPLY", True)]
)
def test_build_echo_v6_matches_ping(name: str, reply: bool) -> None:
    ip, msg = icmp6(getattr(V, name))
    src, dst = IPv6Address(ip.src), IPv6Address(ip.dst)
    built = build_icmp_echo(src, dst, msg.ident, msg.seq, msg.data, reply=reply)
    assert bytes(Ipv6Packet.checked(built).payload) == bytes(ip.payload)
    assert Ipv6Repr.parse(Ipv6Packet.checked(built)) == dataclasses.replace(
        Ipv6Repr.parse(ip), flow_label=0
    )


def test_build_echo_v4_request() -> None:
    pkt = parse_ip(build_icmp_echo(A4.packed, B4.packed, 7, 9, b"hi"))
    assert isinstance(pkt, Ipv4Packet) and pkt.verify_checksum()
    msg = IcmpPacket.checked(pkt.payload)
    assert (msg.type, msg.ident, msg.seq, bytes(msg.data)) == (icmp.ECHO_REQUEST, 7, 9, b"hi")
    assert msg.verify_checksum()


def test_unreachable_v4_matches_kernel() -> None:
    """The kernel answered the closed-port datagram; our error is the same message."""
    built = Ipv4Packet.checked(build_icmp_unreachable(V.IPV4_UDP_CLOSED_PORT, B4, code=3))
    kernel = Ipv4Packet.checked(V.IPV4_ICMP_PORT_UNREACH)
    assert bytes(built.payload) == bytes(kernel.payload)
    assert Ipv4Repr.parse(built) == dataclasses.replace(Ipv4Repr.parse(kernel), ident=0)


def test_unreachable_v6_matches_kernel() -> None:
    built = Ipv6Packet.checked(build_icmp_unreachable(V.IPV6_UDP_CLOSED_PORT, B6, code=4))
    kernel = Ipv6Packet.checked(V.IPV6_ICMP_PORT_UNREACH)
    assert bytes(built.payload) == bytes(kernel.payload)
    assert Ipv6Repr.parse(built) == dataclasses.replace(Ipv6Repr.parse(kernel), flow_label=0)


@pytest.mark.parametrize(
    ("original", "src", "limit"),
    [(V.IPV4_UDP_FRAG_FIRST, B4, 576), (V.IPV6_HBH_FRAG_FIRST, B6, 1280)],
    ids=["v4-576", "v6-1280"],
)
def test_unreachable_quote_is_bounded(original: bytes, src: IPv4Address, limit: int) -> None:
    built = build_icmp_unreachable(original, src, code=1)
    assert len(built) == limit
    pkt = parse_ip(built)
    header = len(pkt.buf) - len(pkt.payload)
    quoted = bytes(pkt.buf[header + 8 :])
    assert original.startswith(quoted)
    if isinstance(pkt, Ipv4Packet):
        assert IcmpPacket.checked(pkt.payload).verify_checksum()
    else:
        assert Icmpv6Packet.checked(pkt.payload).verify_checksum(pkt.src, pkt.dst)


def test_unreachable_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="IP version"):
        build_icmp_unreachable(V.IPV4_UDP_CLOSED_PORT, B6, code=3)
    with pytest.raises(WireError):
        build_icmp_unreachable(b"\x45\x00", B4, code=3)


def test_echo_reply_in_place_with_delta() -> None:
    """Turn a request into a reply in place: swap addresses, flip the type, adjust."""
    ip, msg = icmp4(V.IPV4_ICMP_ECHO_REQUEST)
    ip.src, ip.dst = ip.dst, ip.src
    delta = checksum_delta(bytes([msg.type, msg.code]), bytes([icmp.ECHO_REPLY, 0]))
    msg.type = icmp.ECHO_REPLY
    msg.adjust_checksum(delta)
    assert msg.verify_checksum() and ip.verify_checksum()  # address swap keeps the IP sum


def test_all_zero_echo_reply_gets_minus_zero() -> None:
    """Ident 0, seq 0, no data: the reply is all zeros and its checksum must be 0xffff."""
    _, msg = icmp4(build_icmp_echo(A4, B4, 0, 0))
    assert msg.checksum == 0xF7FF
    msg.type = icmp.ECHO_REPLY
    msg.adjust_checksum(checksum_delta(b"\x08\x00", b"\x00\x00"))
    assert msg.checksum == 0xFFFF and msg.verify_checksum()


def test_fill_and_setters() -> None:
    ip, msg = icmp6(V.IPV6_ICMP_ECHO_REQUEST)
    msg.ident = 0x1234
    msg.seq = 2
    msg.code = 0
    assert not msg.verify_checksum(ip.src, ip.dst)
    msg.fill_checksum(ip.src, ip.dst)
    assert msg.verify_checksum(ip.src, ip.dst) and msg.rest_of_header == 0x12340002
    msg.rest_of_header = 0x00000500
    assert (msg.ident, msg.seq) == (0, 0x0500)
    _, msg4 = icmp4(V.IPV4_ICMP_ECHO_REQUEST)
    msg4.seq = 7
    msg4.fill_checksum()
    assert msg4.verify_checksum()
    assert "IcmpPacket(type=8" in repr(msg4)


@pytest.mark.parametrize("view", [IcmpPacket, Icmpv6Packet])
def test_checked_refuses_short(view: type[IcmpPacket] | type[Icmpv6Packet]) -> None:
    with pytest.raises(Truncated):
        view.checked(bytes(7))
