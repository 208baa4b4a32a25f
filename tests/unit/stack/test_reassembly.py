"""IP reassembly before the stack: bytes in, whole datagrams out, every drop counted.

No root, no sockets: fragments are built here (or by scapy, as an independent oracle),
time is a fake clock.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.packets import fragments as scapy_fragments
from harness.packets import icmp_echo, udp
from ztun.stack import SystemStack, UdpDatagram
from ztun.stack.reassembly import PIECE_OVERHEAD, Reassembler
from ztun.wire import (
    IcmpPacket,
    Icmpv6Packet,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6Repr,
    TcpPacket,
    build_icmp_echo,
    build_tcp,
    build_udp,
    parse_ip,
)
from ztun.wire.fragment import fragment_ip

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
APP4, DST4 = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("10.0.0.9")
APP6, DST6 = ipaddress.IPv6Address("fdfe:dcba:9876::1"), ipaddress.IPv6Address("2001:db8::9")
UDP = 17


def frag4(
    data: bytes,
    offset: int,
    more: bool,
    *,
    ident: int = 7,
    src: ipaddress.IPv4Address = APP4,
    proto: int = UDP,
) -> bytearray:
    """An IPv4 fragment carrying `data` at byte `offset` (RFC 791 header, checksum filled)."""
    header = Ipv4Repr(
        src, DST4, proto, len(data), ident=ident, dont_frag=False, more_frags=more,
        frag_offset=offset,
    )  # fmt: skip
    buf = bytearray(header.total_len)
    header.emit(buf)
    buf[20:] = data
    return buf


def frag6(
    data: bytes,
    offset: int,
    more: bool,
    *,
    ident: int = 7,
    src: ipaddress.IPv6Address = APP6,
    next_header: int = UDP,
) -> bytearray:
    """An IPv6 packet with a Fragment header (RFC 8200 sec. 4.5) and `data` at `offset`."""
    fragment_header = struct.pack("!BBHI", next_header, 0, offset | int(more), ident)
    fixed = Ipv6Repr(src, DST6, 44, 8 + len(data))
    buf = bytearray(40)
    fixed.emit(buf)
    return buf + fragment_header + data


def feed(reassembler: Reassembler, packet: bytes | bytearray, now: float = 0.0) -> bytearray | None:
    ip = parse_ip(bytearray(packet))
    if isinstance(ip, Ipv4Packet):
        assert ip.is_fragment
        return reassembler.ipv4(ip, now)
    frag = ip.fragment()
    assert frag is not None and not frag.is_atomic
    return reassembler.ipv6(ip, frag, now)


def split(packet: bytearray, sizes: list[int]) -> list[bytearray]:
    """Fragments of `packet` (ours, with no extension headers) with the given data sizes."""
    ip = parse_ip(packet)
    header_len = 20 if isinstance(ip, Ipv4Packet) else 40
    body = bytes(packet[header_len:])
    proto = ip.protocol if isinstance(ip, Ipv4Packet) else ip.next_header
    out, offset = [], 0
    for size in [*sizes, len(body) - sum(sizes)]:
        chunk, more = body[offset : offset + size], offset + size < len(body)
        if isinstance(ip, Ipv4Packet):
            out.append(frag4(chunk, offset, more, ident=ip.ident, proto=proto))
        else:
            out.append(frag6(chunk, offset, more, next_header=proto))
        offset += size
    return out


@pytest.fixture
def counters() -> Counter[str]:
    return Counter()


@pytest.fixture
def reassembler(counters: Counter[str]) -> Reassembler:
    return Reassembler(counters)


def stack(mtu: int = 1500) -> SystemStack:
    return SystemStack(
        inet4=INET4, inet6=INET6, listen_port4=40001, listen_port6=40002, mtu=mtu,
        rng=random.Random(5),
    )  # fmt: skip


# -- whole datagrams -------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_fragments_in_any_order_give_the_datagram(reassembler, counters, version, rng) -> None:  # type: ignore[no-untyped-def]
    src, dst = (APP4, DST4) if version == 4 else (APP6, DST6)
    original = udp(rng, src, dst, 5000, rng.randbytes(4000), sport=4000)
    pieces = [bytes(p) for p in scapy_fragments(rng, original, 1480)]  # scapy fragments
    rng.shuffle(pieces)
    assert [feed(reassembler, p) for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    whole = feed(reassembler, pieces[-1])
    assert whole is not None
    ip = parse_ip(whole)
    expected = bytes(original)
    header = 20 if version == 4 else 40
    assert bytes(whole[header:]) == expected[header:]
    if isinstance(ip, Ipv4Packet):
        assert ip.verify_checksum() and not ip.is_fragment and ip.total_len == len(expected)
    else:
        assert ip.next_header == UDP and ip.payload_len == len(expected) - 40
    assert counters == Counter(fragment_reassembled=1)
    assert len(reassembler) == 0 and reassembler.held_bytes == 0


@given(
    v6=st.booleans(),
    size=st.integers(9, 6000),
    piece=st.integers(1, 200).map(lambda n: n * 8),
    seed=st.integers(0, 2**32),
    dups=st.integers(0, 3),
)
def test_any_order_with_duplicates_reassembles_to_the_same_bytes(  # type: ignore[no-untyped-def]
    v6, size, piece, seed, dups
) -> None:
    rng = random.Random(seed)
    src, dst = (APP6, DST6) if v6 else (APP4, DST4)
    packet = build_udp(src, dst, 1000, 2000, rng.randbytes(size))
    if not v6:  # the reassembled header has no flags (DF) left and keeps the ident
        packet[4:8] = (7).to_bytes(2, "big") + bytes(2)
        Ipv4Packet(packet).fill_checksum()
    body = len(packet) - (40 if v6 else 20)
    piece = min(piece, (body - 1) // 8 * 8)  # at least two fragments
    sizes = [piece] * ((body - 1) // piece)
    pieces = split(packet, sizes)
    pieces += rng.choices(pieces[:-1] or pieces, k=dups)  # retransmitted copies
    rng.shuffle(pieces)
    counters: Counter[str] = Counter()
    reassembler = Reassembler(counters)
    results = [feed(reassembler, p) for p in pieces]
    done = [r for r in results if r is not None]
    assert done == [packet]
    assert counters["fragment_reassembled"] == 1
    # A copy that came after the datagram completed starts a datagram of its own.
    assert counters["fragment_duplicate"] + len(reassembler) <= dups


# -- what is refused -------------------------------------------------------------------


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_overlap_discards_the_datagram_and_its_later_fragments(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    """RFC 5722: an overlap drops the datagram, including fragments not yet received."""
    assert feed(reassembler, frag(bytes(16), 0, True)) is None
    assert feed(reassembler, frag(bytes(16), 8, True)) is None  # bytes 8..16 again
    assert counters["fragment_overlap"] == 1 and len(reassembler) == 0
    assert feed(reassembler, frag(bytes(16), 16, False)) is None
    assert counters["fragment_of_discarded"] == 1 and len(reassembler) == 0


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_exact_duplicate_is_dropped_alone(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    first = frag(b"\x01" * 16, 0, True)
    assert feed(reassembler, first) is None
    assert feed(reassembler, first) is None
    assert counters["fragment_duplicate"] == 1
    assert feed(reassembler, frag(b"\x02" * 8, 16, False)) is not None


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_same_place_other_bytes_is_an_overlap(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    assert feed(reassembler, frag(b"\x01" * 16, 0, True)) is None
    assert feed(reassembler, frag(b"\x02" * 16, 0, True)) is None
    assert counters["fragment_overlap"] == 1


def test_tiny_first_fragment_v4(reassembler, counters) -> None:  # type: ignore[no-untyped-def]
    """RFC 1858: a first fragment that cannot hold the ports (here 0 of 8 bytes: a fragment
    must carry data, so 8 is as tiny as a legal one gets)."""
    assert feed(reassembler, frag4(bytes(8), 0, True)) is None  # legal: 8 bytes = ports
    assert counters["fragment_tiny"] == 0
    assert feed(reassembler, frag4(bytes(8), 8, False)) is not None


def test_tiny_first_fragment_v6_is_refused(reassembler, counters) -> None:  # type: ignore[no-untyped-def]
    """RFC 7112: the first fragment holds the whole header chain, upper-layer header
    included: a TCP header (20 bytes) cut after 16 is refused, and so is its datagram."""
    assert feed(reassembler, frag6(bytes(16), 16, False, next_header=6)) is None
    assert feed(reassembler, frag6(bytes(16), 0, True, next_header=6)) is None
    assert counters["fragment_tiny"] == 1 and len(reassembler) == 0


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_not_last_and_not_a_multiple_of_8(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    assert feed(reassembler, frag(bytes(12), 0, True)) is None
    assert counters["fragment_bad_length"] == 1 and len(reassembler) == 0


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_past_65535_is_refused(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    """The "ping of death": the last fragment's end lies past what the length field holds."""
    assert feed(reassembler, frag(bytes(1000), 65528 - 64, False)) is None
    assert counters["fragment_too_big"] == 1 and len(reassembler) == 0


@pytest.mark.parametrize("frag", [frag4, frag6], ids=["v4", "v6"])
def test_two_different_ends_are_inconsistent(reassembler, counters, frag) -> None:  # type: ignore[no-untyped-def]
    assert feed(reassembler, frag(bytes(8), 8, False)) is None
    assert feed(reassembler, frag(bytes(8), 24, False)) is None
    assert counters["fragment_inconsistent"] == 1 and len(reassembler) == 0
    assert feed(reassembler, frag(bytes(16), 32, True)) is None  # a new datagram now
    assert feed(reassembler, frag(bytes(8), 8, False)) is None  # ...that ends before 32
    assert counters["fragment_inconsistent"] == 2


# -- memory and time -------------------------------------------------------------------


def test_unfinished_datagram_expires_after_30_seconds(reassembler, counters) -> None:  # type: ignore[no-untyped-def]
    assert feed(reassembler, frag4(bytes(8), 0, True), now=100.0) is None
    assert reassembler.next_timer() == 130.0
    reassembler.on_timer(129.9)
    assert len(reassembler) == 1
    reassembler.on_timer(130.0)
    assert len(reassembler) == 0 and reassembler.held_bytes == 0
    assert counters["fragment_timeout"] == 1
    # The rest, late, cannot complete it.
    assert feed(reassembler, frag4(bytes(8), 8, False), now=130.5) is None


def test_one_source_cannot_take_more_than_its_share(counters) -> None:  # type: ignore[no-untyped-def]
    reassembler = Reassembler(counters, max_bytes_per_source=4000, max_bytes=100_000)
    other = ipaddress.IPv4Address("172.19.0.3")
    for ident in range(3):  # 3 x (1000 + header + overhead) fits in 4000
        assert feed(reassembler, frag4(bytes(1000), 0, True, ident=ident)) is None
    assert feed(reassembler, frag4(bytes(1000), 0, True, ident=9)) is None
    assert counters["fragment_source_limit"] == 1
    assert len(reassembler) == 3
    assert feed(reassembler, frag4(bytes(1000), 0, True, ident=9, src=other)) is None
    assert len(reassembler) == 4  # another source is not affected
    assert reassembler.held_bytes == 4 * (1000 + 20 + PIECE_OVERHEAD)


def test_total_memory_evicts_the_oldest(counters) -> None:  # type: ignore[no-untyped-def]
    reassembler = Reassembler(counters, max_bytes=2500, max_bytes_per_source=100_000)
    for ident in range(3):
        assert feed(reassembler, frag4(bytes(1000), 0, True, ident=ident)) is None
    assert counters["fragment_evicted"] == 1 and len(reassembler) == 2
    assert reassembler.held_bytes <= 2500
    # The evicted one (ident 0) cannot complete; the newest can.
    assert feed(reassembler, frag4(bytes(8), 1000, False, ident=0)) is None
    assert feed(reassembler, frag4(bytes(8), 1000, False, ident=2)) is not None


def test_datagram_count_is_bounded(counters) -> None:  # type: ignore[no-untyped-def]
    reassembler = Reassembler(counters, max_datagrams=4)
    for ident in range(10):
        feed(reassembler, frag4(bytes(8), 8, False, ident=ident))
    assert len(reassembler) == 4 and counters["fragment_evicted"] == 6


# -- through the stack -----------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_stack_hands_on_a_reassembled_udp_datagram(version, rng) -> None:  # type: ignore[no-untyped-def]
    s = stack()
    src, dst = (APP4, DST4) if version == 4 else (APP6, DST6)
    payload = rng.randbytes(4000)
    original = udp(rng, src, dst, 53, payload, sport=4444)
    outs = [
        s.receive(memoryview(bytearray(bytes(p))), 1.0)
        for p in scapy_fragments(rng, original, 1480)
    ]
    assert outs[:-1] == [None] * (len(outs) - 1)
    datagram = outs[-1]
    assert isinstance(datagram, UdpDatagram)
    assert datagram.payload == payload
    assert (datagram.dst_port, datagram.session.client_port) == (53, 4444)
    assert datagram.dst_addr == dst.packed
    assert "ipv4_fragment" not in s.counters and "ipv6_fragment" not in s.counters


@pytest.mark.parametrize("version", [4, 6])
def test_a_3000_byte_ping_is_answered_in_fragments(version, rng) -> None:  # type: ignore[no-untyped-def]
    """Reassembled, answered locally, and the 3028-byte reply fragmented to the MTU."""
    s = stack(mtu=1500)
    src, dst = (APP4, DST4) if version == 4 else (APP6, DST6)
    data = rng.randbytes(3000)
    request = icmp_echo(rng, src, dst, ident=0x4242, seq=9, payload=data)
    outs = [
        s.receive(memoryview(bytearray(bytes(p))), 0.0) for p in scapy_fragments(rng, request, 1480)
    ]
    reply = outs[-1]
    assert isinstance(reply, list) and len(reply) == 3
    assert all(len(p) <= 1500 for p in reply)
    reassembler = Reassembler(Counter())
    whole = [feed(reassembler, p) for p in reply][-1]
    assert whole is not None
    ip = parse_ip(whole)
    assert (ip.src, ip.dst) == (dst.packed, src.packed)
    if isinstance(ip, Ipv4Packet):
        echo = IcmpPacket.checked(ip.payload)
        assert echo.type == 0 and echo.verify_checksum()
    else:
        echo6 = Icmpv6Packet.checked(ip.payload)
        assert echo6.type == 129 and echo6.verify_checksum(ip.src, ip.dst)
    assert bytes(ip.payload[4:8]) == struct.pack("!HH", 0x4242, 9)
    assert bytes(ip.payload[8:]) == data


def test_fragmented_tcp_segment_goes_onto_the_hairpin_whole() -> None:
    s = stack(mtu=1500)
    syn = build_tcp(APP4, DST4, 5555, 80, seq=1, flags=0x02)
    s.receive(memoryview(bytearray(syn)), 0.0)
    segment = build_tcp(APP4, DST4, 5555, 80, seq=2, flags=0x18, payload=bytes(range(256)) * 8)
    segment[4:8] = (7).to_bytes(2, "big") + bytes(2)
    Ipv4Packet(segment).fill_checksum()
    pieces = fragment_ip(segment, 576, 7)
    outs = [s.receive(memoryview(p), 0.0) for p in pieces]
    assert outs[:-1] == [None] * (len(pieces) - 1)
    out = outs[-1]
    assert isinstance(out, list) and len(out) == 2  # 2068 bytes, fragmented to 1500 again
    reassembler = Reassembler(Counter())
    whole = [feed(reassembler, p) for p in out][-1]
    assert whole is not None
    ip = Ipv4Packet.checked(whole)
    tcp = TcpPacket.checked(ip.payload)
    assert tcp.dst_port == 40001 and tcp.verify_checksum(ip.src, ip.dst)
    assert bytes(tcp.payload) == bytes(range(256)) * 8


def test_udp_reply_larger_than_the_mtu_is_written_in_fragments() -> None:
    s = stack(mtu=1280)
    (datagram,) = [s.receive(memoryview(build_udp(APP6, DST6, 1, 2, b"q")), 0.0)]
    assert isinstance(datagram, UdpDatagram)
    reply = s.udp_reply(datagram.session, DST6.packed, 2, bytes(3000), 0.0)
    packets = s.fragment(reply)
    assert len(packets) == 3 and all(len(p) <= 1280 for p in packets)
    assert s.counters["fragmented_to_tun"] == 1
    reassembler = Reassembler(Counter())
    assert [feed(reassembler, p) for p in packets][-1] == reply
    small = build_udp(APP6, DST6, 1, 2, b"small")
    assert s.fragment(small) == [small]


def test_atomic_fragment_is_a_whole_datagram() -> None:
    """RFC 6946: offset 0, M clear -- processed at once, apart from any reassembly of
    fragments that share its identification."""
    s = stack()
    body = bytes(build_udp(APP6, DST6, 7777, 53, b"atomic")[40:])
    assert s.receive(memoryview(frag6(bytes(16), 16, True)), 0.0) is None  # in reassembly
    out = s.receive(memoryview(frag6(body, 0, False)), 0.0)
    assert isinstance(out, UdpDatagram) and out.payload == b"atomic"
    assert len(s.reassembly) == 1


def test_ipv4_fragment_with_a_bad_header_checksum_is_not_held() -> None:
    s = stack()
    piece = frag4(bytes(16), 0, True)
    piece[10] ^= 0xFF
    assert s.receive(memoryview(piece), 0.0) is None
    assert s.counters["ipv4_bad_checksum"] == 1 and len(s.reassembly) == 0


def test_stack_timer_expires_fragments() -> None:
    s = stack()
    s.receive(memoryview(frag4(bytes(16), 0, True)), 0.0)
    s.on_timer(31.0)
    assert s.counters["fragment_timeout"] == 1 and len(s.reassembly) == 0


def test_fragments_of_an_echo_built_here_match_scapys_reassembly(rng) -> None:  # type: ignore[no-untyped-def]
    """The way back, checked by an independent reassembler (scapy's defragment)."""
    from scapy.layers.inet import IP, defragment

    packet = build_icmp_echo(DST4, APP4, 1, 2, rng.randbytes(3000), reply=True)
    pieces = stack(mtu=1500).fragment(packet)
    joined = defragment([IP(bytes(p)) for p in pieces])[0]
    assert bytes(joined.payload) == bytes(packet[20:])
