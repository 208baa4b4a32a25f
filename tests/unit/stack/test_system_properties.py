"""Property tests of the NAT hairpin: any flow goes out and comes back as itself."""

from __future__ import annotations

import ipaddress

from hypothesis import assume, given
from hypothesis import strategies as st

from ztun.stack import SystemStack
from ztun.wire import ACK, PSH, SYN, TcpPacket, build_tcp, parse_ip

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
