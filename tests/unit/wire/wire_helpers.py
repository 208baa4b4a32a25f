"""Shared helpers for the ztun.wire tests: a naive checksum reference, hypothesis
strategies for every repr, and a "parse everything" walker for fuzzing.

Named ``wire_helpers`` (not ``helpers``) because test directories have no
``__init__.py``: a plain module name must be unique across the whole test tree.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import strategies as st

from ztun.wire import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IcmpPacket,
    Icmpv6Packet,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6Repr,
    TcpOptions,
    TcpPacket,
    TcpRepr,
    UdpPacket,
    UdpRepr,
    emit_options,
    parse_ip,
    parse_options,
)

POISON = 0xA5


def poisoned(size: int) -> bytearray:
    """A buffer full of 0xa5, so any byte an emitter forgets to write shows up."""
    return bytearray([POISON]) * size


def naive_ones_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 word-by-word end-around-carry sum: the reference for the fast version."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# -- strategies -------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
ipv4_addrs = st.builds(IPv4Address, u32)
ipv6_addrs = st.builds(IPv6Address, st.integers(0, (1 << 128) - 1))
raw_v4 = st.binary(min_size=4, max_size=4)
raw_v6 = st.binary(min_size=16, max_size=16)
payloads = st.binary(max_size=300)

ipv4_reprs = st.builds(
    Ipv4Repr,
    src=ipv4_addrs,
    dst=ipv4_addrs,
    protocol=u8,
    payload_len=st.integers(0, 1500),
    ttl=u8,
    ident=u16,
    dont_frag=st.booleans(),
    dscp_ecn=u8,
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    more_frags=st.booleans(),
    frag_offset=st.integers(0, 0x1FFF).map(lambda n: n * 8),
)

ipv6_reprs = st.builds(
    Ipv6Repr,
    src=ipv6_addrs,
    dst=ipv6_addrs,
    next_header=u8,
    payload_len=u16,
    hop_limit=u8,
    traffic_class=u8,
    flow_label=st.integers(0, 0xFFFFF),
)


def _fits(opts: TcpOptions) -> bool:
    try:
        emit_options(opts)
    except ValueError:
        return False
    return True


tcp_options = st.builds(
    TcpOptions,
    mss=st.none() | u16,
    window_scale=st.none() | u8,
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    timestamps=st.none() | st.tuples(u32, u32),
).filter(_fits)

tcp_reprs = st.builds(
    TcpRepr,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=u8,
    window=u16,
    urgent=u16,
    options=tcp_options,
    payload_len=st.integers(0, 200),
)

udp_reprs = st.builds(UdpRepr, src_port=u16, dst_port=u16, payload_len=st.integers(0, 300))

#: (raw src, raw dst) of one IP version.
addr_pairs = st.tuples(raw_v4, raw_v4) | st.tuples(raw_v6, raw_v6)


# -- fuzz walker --------------------------------------------------------------------


def touch_everything(buf: bytes | bytearray | memoryview) -> None:
    """Parse ``buf`` as deep as it goes and read every field and repr on the way.

    Fuzz tests assert this raises nothing but ``WireError`` -- a checked view must
    make every later accessor safe.
    """
    pkt = parse_ip(buf)
    if isinstance(pkt, Ipv4Packet):
        Ipv4Repr.parse(pkt, verify_checksum=False)
        _ = (pkt.options, pkt.payload, pkt.is_fragment, pkt.verify_checksum(), repr(pkt))
        proto, upper = pkt.protocol, pkt.payload
    else:
        Ipv6Repr.parse(pkt)
        _ = (pkt.payload, pkt.is_fragment, repr(pkt))
        proto, offset = pkt.upper_layer()
        upper = pkt.buf[offset:]
    src, dst = pkt.src, pkt.dst
    if pkt.is_fragment:  # the upper layer spans fragments; the stack stops here too
        return
    if proto == IPPROTO_TCP:
        tcp = TcpPacket.checked(upper)
        TcpRepr.parse(tcp)
        _ = (tcp.payload, tcp.flags, tcp.fin, tcp.cwr, tcp.verify_checksum(src, dst), repr(tcp))
        parse_options(tcp.options)
    elif proto == IPPROTO_UDP:
        udp = UdpPacket.checked(upper)
        UdpRepr.parse(udp)
        _ = (udp.payload, udp.verify_checksum(src, dst), repr(udp))
    elif proto == IPPROTO_ICMP:
        icmp = IcmpPacket.checked(upper)
        _ = (icmp.type, icmp.rest_of_header, icmp.data, icmp.verify_checksum(), repr(icmp))
    elif proto == IPPROTO_ICMPV6:
        icmp6 = Icmpv6Packet.checked(upper)
        _ = (icmp6.ident, icmp6.seq, icmp6.data, icmp6.verify_checksum(src, dst))
