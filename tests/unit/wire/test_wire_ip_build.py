"""parse_ip dispatch and the TCP/UDP builders (both IP versions)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from ztun.wire import (
    ACK,
    IPPROTO_TCP,
    IPPROTO_UDP,
    RST,
    Address,
    Ipv4Packet,
    Ipv6Packet,
    Malformed,
    TcpOptions,
    TcpPacket,
    Truncated,
    UdpPacket,
    build_tcp,
    build_udp,
    parse_ip,
)

V4 = (IPv4Address("172.19.0.1"), IPv4Address("172.19.0.2"))
V6 = (IPv6Address("fdfe:dcba:9876::1"), IPv6Address("fdfe:dcba:9876::2"))


def test_parse_ip_dispatch() -> None:
    assert isinstance(parse_ip(build_udp(*V4, 1, 2, b"")), Ipv4Packet)
    assert isinstance(parse_ip(build_udp(*V6, 1, 2, b"")), Ipv6Packet)
    with pytest.raises(Truncated):
        parse_ip(b"")
    with pytest.raises(Malformed) as info:
        parse_ip(b"\x50" + bytes(40))
    assert info.value.reason == "bad_version"


@pytest.mark.parametrize("addrs", [V4, V6, (V4[0].packed, V4[1].packed)], ids=["v4", "v6", "raw"])
def test_build_tcp(addrs: tuple[Address, Address]) -> None:
    opts = TcpOptions(mss=1400, sack_permitted=True)
    buf = build_tcp(
        *addrs,
        40000,
        443,
        seq=5,
        ack=6,
        flags=RST | ACK,
        window=0,
        options=opts,
        payload=b"xy",
        ttl=3,
        ident=9,
    )
    ip = parse_ip(buf)
    assert isinstance(ip, Ipv4Packet | Ipv6Packet)
    proto, offset = (ip.protocol, ip.header_len) if isinstance(ip, Ipv4Packet) else ip.upper_layer()
    assert proto == IPPROTO_TCP
    tcp = TcpPacket.checked(ip.buf[offset:])
    assert tcp.verify_checksum(ip.src, ip.dst)
    assert (tcp.src_port, tcp.dst_port, tcp.seq, tcp.ack, tcp.flags, tcp.window) == (
        40000,
        443,
        5,
        6,
        RST | ACK,
        0,
    )
    assert bytes(tcp.payload) == b"xy"
    if isinstance(ip, Ipv4Packet):
        assert (ip.ttl, ip.ident) == (3, 9) and ip.verify_checksum()
    else:
        assert ip.hop_limit == 3


def test_build_udp_v6() -> None:
    ip = parse_ip(build_udp(*V6, 5353, 53, b"q"))
    assert isinstance(ip, Ipv6Packet)
    assert ip.upper_layer() == (IPPROTO_UDP, 40)
    udp = UdpPacket.checked(ip.payload)
    assert udp.verify_checksum(ip.src, ip.dst) and bytes(udp.payload) == b"q"


def test_builders_leave_no_buffer_exports() -> None:
    """Builders return bytearrays the caller may still grow (no memoryview left on them)."""
    buf = build_tcp(*V4, 1, 2, payload=b"abc")
    buf.extend(b"more")
    buf = build_udp(*V6, 1, 2, b"abc")
    buf.extend(b"more")


@pytest.mark.parametrize(
    ("src", "dst", "match"),
    [(V4[0], V6[1], "different IP versions"), (b"\0" * 5, b"\0" * 5, "not an IP address")],
)
def test_builders_refuse_bad_addresses(src: Address, dst: Address, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_udp(src, dst, 1, 2, b"")
