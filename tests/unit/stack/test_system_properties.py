"""Property tests of the NAT hairpin: any flow goes out and comes back as itself."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ztun.stack import SystemStack, UdpDatagram
from ztun.wire import ACK, PSH, SYN, TcpPacket, build_tcp, build_udp, parse_ip

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")

ports = st.integers(1, 65535)
payloads = st.binary(max_size=300)
# Unicast only: the stack drops multicast on purpose (another test covers that).
v4 = st.builds(ipaddress.IPv4Address, st.integers(1, int(ipaddress.IPv4Address("223.255.255.255"))))
v6 = st.builds(ipaddress.IPv6Address, st.integers(1, int(ipaddress.IPv6Address("feff::")) - 1))


def segment(packet):  # type: ignore[no-untyped-def]
    ip = parse_ip(packet)
    _proto, offset = (6, 20) if ip.version == 4 else ip.upper_layer()
    tcp = TcpPacket.checked(ip.buf[ip.header_len if ip.version == 4 else offset :])
    assert tcp.verify_checksum(ip.src, ip.dst)
    if ip.version == 4:
        assert ip.verify_checksum()
    return ip, tcp


@given(
    pair=st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)),
    sport=ports,
    dport=ports,
    seq=st.integers(0, 2**32 - 2),
    data=payloads,
    reply=payloads,
)
def test_flow_round_trips_through_the_hairpin(pair, sport, dport, seq, data, reply) -> None:  # type: ignore[no-untyped-def]
    app, dst = pair
    # The kernel never lets an app reuse the listener's own address and port.
    assume(not (app in (INET4.ip, INET6.ip) and sport in (7001, 7002)))
    stack = SystemStack(inet4=INET4, inet6=INET6, listen_port4=7001, listen_port6=7002)
    syn = build_tcp(app, dst, sport, dport, seq=seq, flags=SYN)
    ip, tcp = segment(stack.receive(memoryview(bytearray(syn)), 0.0))
    server, peer, nat_port = ip.dst, ip.src, tcp.src_port
    out = stack.receive(
        memoryview(
            bytearray(build_tcp(app, dst, sport, dport, seq=seq + 1, flags=ACK | PSH, payload=data))
        ),
        0.1,
    )
    _, tcp = segment(out)
    assert tcp.src_port == nat_port and bytes(tcp.payload) == data
    answer = build_tcp(
        server, peer, tcp.dst_port, nat_port, seq=9, ack=seq + 1, flags=ACK | PSH, payload=reply
    )
    ip, tcp = segment(stack.receive(memoryview(bytearray(answer)), 0.2))
    assert (ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)) == (dst, app)
    assert (tcp.src_port, tcp.dst_port, bytes(tcp.payload)) == (dport, sport, reply)


# -- the IPv4 UDP fast lane ------------------------------------------------------------------


def _udp_outcome(stack: SystemStack, out):  # type: ignore[no-untyped-def]
    """What a receive produced, comparable across two stacks (sessions are per stack)."""
    if isinstance(out, UdpDatagram):
        s = out.session
        return (
            "udp",
            s.version,
            s.client_addr,
            s.client_port,
            out.dst_addr,
            out.dst_port,
            out.payload,
        )
    return ("other", None if out is None else bytes(out), dict(stack.counters))


@given(
    src=v4,
    dst=st.one_of(v4, st.just(ipaddress.IPv4Address("239.1.2.3"))),
    sport=ports,
    dport=ports,
    data=payloads,
    edits=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 8),
    partial=st.booleans(),
)
def test_udp_fast_lane_agrees_with_the_general_path(  # type: ignore[no-untyped-def]
    src, dst, sport, dport, data, edits, cut, partial
) -> None:
    """Any IPv4 UDP packet, intact or with a few bytes changed or cut off the end (lengths,
    flags, checksums, the IHL, multicast): receive() gives what the general path gives."""
    packet = build_udp(src.packed, dst.packed, sport, dport, data)
    for offset, value in edits:
        if offset < len(packet):
            packet[offset] = value
    if cut:
        packet = packet[:-cut]
    fast, general = SystemStack(inet4=INET4, inet6=None), SystemStack(inet4=INET4, inet6=None)
    got = fast.receive(memoryview(bytearray(packet)), 1.0, partial)
    want = general._receive_ip(memoryview(bytearray(packet)), 1.0, partial)
    assert _udp_outcome(fast, got) == _udp_outcome(general, want)
    assert fast.counters == general.counters


def test_udp_fast_lane_takes_an_intact_datagram() -> None:
    packet = build_udp(bytes([10, 0, 0, 2]), bytes([192, 0, 2, 9]), 40000, 53, b"query")
    stack = SystemStack(inet4=INET4, inet6=None)
    out = stack._udp4_fast(memoryview(packet), 1.0, False)
    assert isinstance(out, UdpDatagram)
    assert (out.dst_addr, out.dst_port, out.payload) == (bytes([192, 0, 2, 9]), 53, b"query")
    assert (out.session.client_addr, out.session.client_port) == (bytes([10, 0, 0, 2]), 40000)
    bad = bytearray(packet)
    bad[10] ^= 1  # IPv4 header checksum
    assert stack._udp4_fast(memoryview(bad), 1.0, False) is None
    assert stack.receive(memoryview(bad), 1.0, False) is None
    assert stack.counters["ipv4_bad_checksum"] == 1


# -- the IPv4 TCP fast lane ------------------------------------------------------------------

LISTEN4 = 7001


def _tcp_stacks(  # type: ignore[no-untyped-def]
    app: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    sport: int,
    dport: int,
    state: str = "pending",
):
    """Two stacks that both hold the flow app:sport -> dst:dport (opened by the same SYN),
    left PENDING, made ACTIVE (accepted) or CLOSING (its relay ended)."""
    stacks = []
    for _ in range(2):
        stack = SystemStack(inet4=INET4, inet6=None, listen_port4=LISTEN4)
        syn = build_tcp(app, dst, sport, dport, seq=1, flags=SYN)
        assert stack._receive_ip(memoryview(bytearray(syn)), 0.0, False) is not None
        nat = stack.nat4
        assert nat is not None
        session = nat.by_flow((app.packed, sport, dst.packed, dport))
        assert session is not None
        if state != "pending":
            assert stack.tcp_accepted(4, nat.peer_addr, session.nat_port) is session
        if state == "closing":
            stack.tcp_closed(session, 0.5)
        stacks.append(stack)
    return stacks


def _nat_state(stack: SystemStack):  # type: ignore[no-untyped-def]
    nat = stack.nat4
    assert nat is not None
    return sorted((s.nat_port, s.state, s.client_port, s.dst_port) for s in nat)


@given(
    app=v4,
    dst=v4,
    sport=ports,
    dport=ports,
    from_listener=st.booleans(),
    flags=st.integers(0, 255),
    data=payloads,
    edits=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 8),
    padding=st.binary(max_size=6),
    partial=st.booleans(),
    state=st.sampled_from(["pending", "active", "closing"]),
)
def test_tcp_fast_lane_agrees_with_the_general_path(  # type: ignore[no-untyped-def]
    app, dst, sport, dport, from_listener, flags, data, edits, cut, padding, partial, state
) -> None:
    """A segment of a held flow, from the app or from the listener, intact or with a few
    bytes changed or cut (lengths, data offset, flags, addresses, checksums): receive()
    rewrites the same bytes, returns the same kind of answer and counts the same drops as
    the general path, and leaves the NAT in the same state."""
    assume(not (app == INET4.ip and sport == LISTEN4))
    fast, general = _tcp_stacks(app, dst, sport, dport, state)
    nat = fast.nat4
    assert nat is not None
    if from_listener:
        session = nat.by_flow((app.packed, sport, dst.packed, dport))
        assert session is not None
        server, peer = ipaddress.IPv4Address(nat.server_addr), ipaddress.IPv4Address(nat.peer_addr)
        packet = build_tcp(
            server, peer, LISTEN4, session.nat_port, seq=5, flags=flags, payload=data
        )
    else:
        packet = build_tcp(app, dst, sport, dport, seq=2, flags=flags, payload=data)
    for offset, value in edits:
        if offset < len(packet):
            packet[offset] = value
    if cut:
        packet = packet[:-cut]
    packet += padding  # bytes past the IPv4 total length (link padding)
    got_buf, want_buf = bytearray(packet), bytearray(packet)
    got = fast.receive(memoryview(got_buf), 1.0, partial)
    want = general._receive_ip(memoryview(want_buf), 1.0, partial)
    assert type(got) is type(want)
    if isinstance(want, memoryview):
        assert got_buf == want_buf  # rewritten in place, identically
        assert bytes(got) == bytes(want)  # type: ignore[arg-type]  # the same view
    elif want is not None:
        assert bytes(got) == bytes(want)  # type: ignore[arg-type]
    assert fast.counters == general.counters
    assert _nat_state(fast) == _nat_state(general)


def test_tcp_fast_lane_takes_held_flows_only() -> None:
    app, dst = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("192.0.2.9")
    stack = SystemStack(inet4=INET4, inet6=None, listen_port4=LISTEN4)
    syn = build_tcp(app, dst, 40000, 443, seq=1, flags=SYN)
    assert stack._tcp4_fast(memoryview(bytearray(syn)), False) is None  # new flow: general
    stack.receive(memoryview(bytearray(syn)), 0.0)
    ack = bytearray(build_tcp(app, dst, 40000, 443, seq=2, ack=9, flags=ACK, payload=b"hi"))
    out = stack._tcp4_fast(memoryview(ack), False)
    assert out is not None
    _ip, tcp = segment(ack)  # checksums verified inside
    assert tcp.dst_port == LISTEN4 and bytes(tcp.payload) == b"hi"


@pytest.mark.parametrize(
    ("offset", "value"),
    [(32, 0x40), (32, 0xF0), (10, 0x00), (6, 0x20), (2, 0xFF), (16, 239)],
    ids=["data-offset-4", "data-offset-past-end", "ip-checksum", "fragment", "total-len", "mcast"],
)
def test_tcp_fast_lane_leaves_odd_segments_to_the_general_path(offset: int, value: int) -> None:
    app, dst = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("192.0.2.9")
    fast, general = _tcp_stacks(app, dst, 40000, 443)
    packet = bytearray(build_tcp(app, dst, 40000, 443, seq=2, flags=ACK, payload=b"x" * 8))
    packet[offset] = value
    assert fast._tcp4_fast(memoryview(bytearray(packet)), False) is None
    got = fast.receive(memoryview(bytearray(packet)), 1.0)
    want = general._receive_ip(memoryview(bytearray(packet)), 1.0, False)
    assert (got is None) == (want is None)
    assert fast.counters == general.counters and sum(fast.counters.values()) >= (want is None)


def test_a_new_syn_on_a_closing_flow_opens_a_new_one_in_both_paths() -> None:
    """The app reused its port while the old flow lingers (CLOSING): the SYN is a new flow
    with a new NAT port -- the fast lane must not push it onto the old one."""
    app, dst = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("192.0.2.9")
    fast, general = _tcp_stacks(app, dst, 40000, 443, "closing")
    syn = build_tcp(app, dst, 40000, 443, seq=77, flags=SYN)
    got_buf, want_buf = bytearray(syn), bytearray(syn)
    assert fast._tcp4_fast(memoryview(bytearray(syn)), False) is None
    fast.receive(memoryview(got_buf), 1.0)
    general._receive_ip(memoryview(want_buf), 1.0, False)
    assert got_buf == want_buf
    _ip, tcp = segment(got_buf)
    old = _nat_state(fast)
    assert len(old) == 2 and tcp.src_port == max(port for port, *_ in old)
