"""SystemStack, bytes in / bytes out: no root, no sockets, a fake clock."""

from __future__ import annotations

import ipaddress

import pytest

from ztun.stack import SystemStack, TcpSessionExpired, UdpDatagram, UdpSessionExpired, hairpin_peer
from ztun.wire import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    IcmpPacket,
    Icmpv6Packet,
    Ipv4Packet,
    Ipv6Packet,
    TcpOptions,
    TcpPacket,
    UdpPacket,
    build_icmp_echo,
    build_tcp,
    build_udp,
    parse_ip,
)

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
SERVER4, PEER4 = INET4.ip, ipaddress.IPv4Address("172.19.0.2")
SERVER6, PEER6 = INET6.ip, ipaddress.IPv6Address("fdfe:dcba:9876::2")
APP4, DST4 = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("93.184.216.34")
APP6, DST6 = ipaddress.IPv6Address("fdfe:dcba:9876::1"), ipaddress.IPv6Address("2001:db8::80")
LISTEN4, LISTEN6 = 40001, 40002


@pytest.fixture
def stack() -> SystemStack:
    return SystemStack(
        inet4=INET4, inet6=INET6, listen_port4=LISTEN4, listen_port6=LISTEN6, udp_timeout=60.0
    )


def feed(stack: SystemStack, packet: bytes | bytearray, now: float = 0.0):  # type: ignore[no-untyped-def]
    return stack.receive(memoryview(bytearray(packet)), now)


def tcp_of(packet) -> tuple:  # type: ignore[no-untyped-def]
    ip = parse_ip(packet)
    if isinstance(ip, Ipv4Packet):
        assert ip.verify_checksum()
        seg = TcpPacket.checked(ip.payload)
    else:
        _, off = ip.upper_layer()
        seg = TcpPacket.checked(ip.buf[off:])
    assert seg.verify_checksum(ip.src, ip.dst), (
        "transport checksum must stay valid after the rewrite"
    )
    return ip, seg


def test_hairpin_peer_is_next_address_in_prefix() -> None:
    assert hairpin_peer(INET4) == PEER4
    assert hairpin_peer(ipaddress.IPv4Interface("10.0.0.2/30")) == ipaddress.IPv4Address("10.0.0.1")
    assert hairpin_peer(INET6) == PEER6
    with pytest.raises(ValueError, match="second address"):
        hairpin_peer(ipaddress.IPv4Interface("10.0.0.1/32"))


@pytest.mark.parametrize(
    ("app", "dst", "server", "peer", "listen"),
    [
        (APP4, DST4, SERVER4, PEER4, LISTEN4),
        (APP6, DST6, SERVER6, PEER6, LISTEN6),
    ],
)
def test_tcp_flow_is_rewritten_onto_the_hairpin_and_back(
    stack, app, dst, server, peer, listen
) -> None:  # type: ignore[no-untyped-def]
    syn = build_tcp(
        app, dst, 51000, 443, seq=1000, flags=SYN, options=TcpOptions(mss=1460, window_scale=7)
    )
    out = feed(stack, syn)
    ip, seg = tcp_of(out)
    assert (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)) == (peer, server)
    assert seg.dst_port == listen and seg.seq == 1000 and seg.flags == SYN
    nat_port = seg.src_port
    session = stack.tcp_accepted(app.version, peer.packed, nat_port)
    assert session is not None
    assert (ipaddress.ip_address(session.dst_addr), session.dst_port) == (dst, 443)
    # The kernel listener answers the hairpin; the app must see the original destination.
    synack = build_tcp(server, peer, listen, nat_port, seq=5000, ack=1001, flags=SYN | ACK)
    ip, seg = tcp_of(feed(stack, synack))
    assert (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)) == (dst, app)
    assert (seg.src_port, seg.dst_port, seg.ack) == (443, 51000, 1001)
    # Data of the same flow maps to the same NAT port.
    data = build_tcp(app, dst, 51000, 443, seq=1001, ack=5001, flags=ACK | PSH, payload=b"x" * 1000)
    ip, seg = tcp_of(feed(stack, data))
    assert seg.src_port == nat_port and bytes(seg.payload) == b"x" * 1000


def test_segment_of_unknown_flow_gets_a_reset(stack) -> None:  # type: ignore[no-untyped-def]
    stray = build_tcp(APP4, DST4, 51001, 80, seq=7, ack=99, flags=ACK)
    ip, seg = tcp_of(feed(stack, stray))
    assert (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)) == (DST4, APP4)
    assert seg.flags == RST and seg.seq == 99
    assert stack.counters["tcp_reset_unknown_flow"] == 1
    assert feed(stack, build_tcp(APP4, DST4, 51001, 80, flags=RST)) is None


def test_listener_packet_to_unknown_nat_port_is_dropped(stack) -> None:  # type: ignore[no-untyped-def]
    assert feed(stack, build_tcp(SERVER4, PEER4, LISTEN4, 2000, flags=SYN | ACK)) is None
    assert stack.counters["tcp_unknown_nat_port"] == 1


def test_pending_flow_expires_but_active_one_lingers_after_close(stack) -> None:  # type: ignore[no-untyped-def]
    out = feed(stack, build_tcp(APP4, DST4, 52000, 80, flags=SYN), now=0.0)
    nat_port = tcp_of(out)[1].src_port
    events = stack.on_timer(31.0)
    assert [type(e) for e in events] == [TcpSessionExpired]
    assert stack.tcp_accepted(4, PEER4.packed, nat_port) is None
    out = feed(stack, build_tcp(APP4, DST4, 52001, 80, flags=SYN), now=40.0)
    session = stack.tcp_accepted(4, PEER4.packed, tcp_of(out)[1].src_port)
    assert session is not None
    assert stack.on_timer(1000.0) == []  # owned by a relay: never expires by itself
    stack.tcp_closed(session, 1000.0)
    fin = build_tcp(APP4, DST4, 52001, 80, seq=9, ack=9, flags=FIN | ACK)
    assert tcp_of(feed(stack, fin, now=1001.0))[1].flags == FIN | ACK  # still translated
    assert len(stack.on_timer(1031.0)) == 1


def test_port_reuse_after_close_opens_a_new_mapping(stack) -> None:  # type: ignore[no-untyped-def]
    first = tcp_of(feed(stack, build_tcp(APP4, DST4, 53000, 80, flags=SYN)))[1].src_port
    session = stack.tcp_accepted(4, PEER4.packed, first)
    stack.tcp_closed(session, 0.0)
    second = tcp_of(feed(stack, build_tcp(APP4, DST4, 53000, 80, flags=SYN)))[1].src_port
    assert second != first


def test_udp_datagram_becomes_event_and_reply_is_built(stack) -> None:  # type: ignore[no-untyped-def]
    event = feed(stack, build_udp(APP4, DST4, 40000, 53, b"query"), now=5.0)
    assert isinstance(event, UdpDatagram)
    assert (ipaddress.ip_address(event.dst_addr), event.dst_port, event.payload) == (
        DST4,
        53,
        b"query",
    )
    again = feed(stack, build_udp(APP4, DST4, 40000, 54, b"x"), now=6.0)
    assert again.session is event.session  # full cone: one session per source
    reply = stack.udp_reply(event.session, DST4.packed, 53, b"answer", now=7.0)
    ip = parse_ip(reply)
    udp = UdpPacket.checked(ip.payload)
    assert (ipaddress.ip_address(ip.dst), udp.dst_port, bytes(udp.payload)) == (
        APP4,
        40000,
        b"answer",
    )
    assert udp.verify_checksum(ip.src, ip.dst)
    assert stack.on_timer(66.0) == []  # the reply kept it alive
    assert [type(e) for e in stack.on_timer(67.1)] == [UdpSessionExpired]


def test_udp_unreachable_quotes_the_datagram(stack) -> None:  # type: ignore[no-untyped-def]
    event = feed(stack, build_udp(APP4, DST4, 40000, 9, b"hello"))
    icmp_packet = stack.udp_unreachable(event)
    ip = parse_ip(icmp_packet)
    icmp = IcmpPacket.checked(ip.payload)
    assert (icmp.type, icmp.code) == (3, 3) and icmp.verify_checksum()
    assert ipaddress.ip_address(ip.dst) == APP4


def test_ping_is_answered_in_place_v4_and_v6(stack) -> None:  # type: ignore[no-untyped-def]
    out = feed(stack, build_icmp_echo(APP4, DST4, 77, 1, b"ping-payload"))
    ip = parse_ip(out)
    icmp = IcmpPacket.checked(ip.payload)
    assert ip.verify_checksum() and icmp.verify_checksum()
    assert (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)) == (DST4, APP4)
    assert (icmp.type, icmp.ident, icmp.seq, bytes(icmp.data)) == (0, 77, 1, b"ping-payload")
    out6 = feed(stack, build_icmp_echo(APP6, DST6, 78, 2, b"v6"))
    ip6 = parse_ip(out6)
    assert isinstance(ip6, Ipv6Packet)
    icmp6 = Icmpv6Packet.checked(ip6.payload)
    assert icmp6.type == 129 and icmp6.verify_checksum(ip6.src, ip6.dst)
    assert ipaddress.ip_address(ip6.src) == DST6


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "malformed_truncated"),
        (b"\x45\x00\x00", "malformed_truncated"),
        (b"\x75" + b"\x00" * 39, "malformed_bad_version"),
    ],
)
def test_garbage_is_counted_and_dropped(stack, packet, reason) -> None:  # type: ignore[no-untyped-def]
    assert feed(stack, packet) is None
    assert stack.counters[reason] == 1


def test_truncated_tcp_header_is_counted(stack) -> None:  # type: ignore[no-untyped-def]
    syn = bytearray(build_tcp(APP4, DST4, 1, 2, flags=SYN))
    cut = syn[:30]
    cut[2:4] = (30).to_bytes(2, "big")  # IP total length says 30: a 10-byte TCP header
    Ipv4Packet.checked(cut).fill_checksum()
    assert feed(stack, cut) is None
    assert sum(v for k, v in stack.counters.items() if k.startswith("malformed_")) == 1


def test_multicast_and_unknown_protocols_are_dropped(stack) -> None:  # type: ignore[no-untyped-def]
    assert (
        feed(stack, build_udp(APP4, ipaddress.IPv4Address("224.0.0.251"), 5353, 5353, b"m")) is None
    )
    gre = bytearray(build_udp(APP4, DST4, 1, 2, b""))
    ip = Ipv4Packet.checked(gre)
    gre[9] = 47
    ip.fill_checksum()
    assert feed(stack, gre) is None
    assert stack.counters["multicast"] == 1 and stack.counters["unsupported_protocol"] == 1


def test_bad_checksums_are_dropped_not_relayed(stack) -> None:  # type: ignore[no-untyped-def]
    bad_udp = bytearray(build_udp(APP4, DST4, 40000, 53, b"query"))
    bad_udp[-1] ^= 0xFF  # payload changed, checksum not
    assert feed(stack, bad_udp) is None
    bad_ip = bytearray(build_udp(APP4, DST4, 40000, 53, b"query"))
    bad_ip[10] ^= 0xFF  # IPv4 header checksum
    assert feed(stack, bad_ip) is None
    bad_v6 = bytearray(build_udp(APP6, DST6, 40000, 53, b"query"))
    bad_v6[-1] ^= 0xFF
    assert feed(stack, bad_v6) is None
    assert stack.counters["udp_bad_checksum"] == 2 and stack.counters["ipv4_bad_checksum"] == 1
    # An offloaded frame carries a partial sum: it is not a bad checksum.
    partial = memoryview(bytearray(build_udp(APP4, DST4, 40000, 53, b"query")))
    partial[26:28] = b"\x12\x34"
    assert isinstance(stack.receive(partial, 0.0, csum_partial=True), UdpDatagram)
    zero = bytearray(build_udp(APP4, DST4, 40000, 53, b"query"))
    zero[26:28] = b"\x00\x00"  # IPv4 "no checksum"
    assert isinstance(feed(stack, zero), UdpDatagram)


def test_corrupt_syn_opens_no_nat_entry(stack) -> None:  # type: ignore[no-untyped-def]
    syn = bytearray(build_tcp(APP4, DST4, 41000, 80, seq=1, flags=SYN))
    syn[-1] ^= 0x01  # inside the TCP header (window/urgent/options): checksum now wrong
    assert feed(stack, syn) is None
    assert stack.counters["tcp_bad_checksum"] == 1
    assert len(stack.nat4) == 0


def test_only_the_hairpin_peer_can_claim_a_pending_flow(stack) -> None:  # type: ignore[no-untyped-def]
    """Another host (or a local user who bound the NAT port) must not get the flow."""
    nat_port = tcp_of(feed(stack, build_tcp(APP4, DST4, 54000, 443, flags=SYN)))[1].src_port
    intruder = ipaddress.IPv4Address("10.66.0.9").packed
    assert stack.tcp_accepted(4, intruder, nat_port) is None
    assert stack.tcp_accepted(4, PEER4.packed, nat_port) is not None
    assert stack.tcp_accepted(4, PEER4.packed, nat_port) is None  # already claimed
