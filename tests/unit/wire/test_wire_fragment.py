"""fragment_ip: byte vectors against what Linux itself emitted, and scapy as the oracle."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest
import wire_vectors as V
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, defragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6

from ztun.stack.reassembly import Reassembler
from ztun.wire import Ipv4Packet, Ipv6Packet, build_udp, parse_ip
from ztun.wire.fragment import fragment_ip

V4_SRC, V4_DST = IPv4Address("10.99.0.1"), IPv4Address("10.99.0.2")
V6_SRC, V6_DST = IPv6Address("fd00:99::1"), IPv6Address("fd00:99::2")


def reassemble(fragments: list[bytearray]) -> bytearray:
    """ztun's own reassembler, for round trips (its tests are in tests/unit/stack)."""
    from collections import Counter

    reassembler = Reassembler(Counter())
    whole = None
    for fragment in fragments:
        ip = parse_ip(fragment)
        if isinstance(ip, Ipv4Packet):
            whole = reassembler.ipv4(ip, 0.0)
        else:
            frag = ip.fragment()
            assert frag is not None
            whole = reassembler.ipv6(ip, frag, 0.0)
    assert whole is not None
    return whole


def test_ipv4_fragments_match_what_linux_sent() -> None:
    """Linux fragmented a 2000-byte UDP datagram at MTU 1500 (captured in wire_vectors):
    reassembled, then fragmented again with its identification, the bytes are the same."""
    whole = reassemble([bytearray(V.IPV4_UDP_FRAG_FIRST), bytearray(V.IPV4_UDP_FRAG_LAST)])
    ident = Ipv4Packet(V.IPV4_UDP_FRAG_FIRST).ident
    assert fragment_ip(whole, 1500, ident) == [V.IPV4_UDP_FRAG_FIRST, V.IPV4_UDP_FRAG_LAST]


def test_ipv6_fragments_match_what_linux_sent() -> None:
    """The hop-by-hop header (router alert) stays in the unfragmentable part of each
    fragment, before the Fragment header, as Linux put it."""
    whole = reassemble([bytearray(V.IPV6_HBH_FRAG_FIRST), bytearray(V.IPV6_HBH_FRAG_LAST)])
    frag = Ipv6Packet(V.IPV6_HBH_FRAG_FIRST).fragment()
    assert frag is not None
    assert fragment_ip(whole, 1500, frag.ident) == [V.IPV6_HBH_FRAG_FIRST, V.IPV6_HBH_FRAG_LAST]


def test_linux_captured_fragments_reassemble() -> None:
    """What Linux sent for a 2000-byte datagram, hop-by-hop header and all."""
    for first, last, udp_at in (
        (V.IPV4_UDP_FRAG_FIRST, V.IPV4_UDP_FRAG_LAST, 20),
        (V.IPV6_HBH_FRAG_FIRST, V.IPV6_HBH_FRAG_LAST, 48),  # hop-by-hop, then UDP
    ):
        whole = reassemble([bytearray(last), bytearray(first)])
        ip = parse_ip(whole)
        if isinstance(ip, Ipv6Packet):
            assert ip.upper_layer() == (17, udp_at)  # no Fragment header left
        assert bytes(whole[udp_at + 8 :]) == bytes(i & 0xFF for i in range(2000))


def test_a_packet_that_fits_is_returned_whole() -> None:
    packet = build_udp(V4_SRC, V4_DST, 1, 2, b"x" * 100)
    assert fragment_ip(packet, 1500, 7) == [packet]


def test_ipv4_fields_of_each_fragment() -> None:
    packet = build_udp(V4_SRC, V4_DST, 4000, 5000, bytes(range(256)) * 16)  # DF set
    fragments = fragment_ip(packet, 576, 0xBEEF)
    assert len(fragments) == 8  # 4124 bytes of UDP in 552-byte pieces
    offset = 0
    for i, raw in enumerate(fragments):
        ip = Ipv4Packet.checked(raw)
        assert len(raw) <= 576 and ip.verify_checksum()
        assert ip.ident == 0xBEEF and not ip.dont_frag  # ztun's own datagram: DF is ours
        assert ip.frag_offset == offset
        assert ip.more_frags == (i < len(fragments) - 1)
        offset += len(ip.payload)
    assert offset == len(packet) - 20
    # scapy agrees on what they make up.
    joined = defragment([IP(bytes(f)) for f in fragments])[0]
    assert bytes(joined.payload) == bytes(packet[20:])


def test_ipv4_only_copied_options_go_into_later_fragments() -> None:
    """RFC 791 sec. 3.1: the copied flag (0x80) says which options every fragment gets."""
    router_alert = bytes([0x94, 4, 0, 0])  # copied
    record_route = bytes([0x07, 7, 4]) + bytes(4) + b"\x00"  # not copied; EOL-padded to 8
    packet = bytearray(build_udp(V4_SRC, V4_DST, 1, 2, bytes(3000)))
    packet[20:20] = router_alert + record_route
    packet[0] = 0x48
    header = Ipv4Packet(packet)
    packet[2:4] = len(packet).to_bytes(2, "big")
    header.fill_checksum()
    first, *later = fragment_ip(packet, 1500, 1)
    assert Ipv4Packet.checked(first).options.tobytes() == router_alert + record_route
    for raw in later:
        ip = Ipv4Packet.checked(raw)
        assert ip.options.tobytes() == router_alert and ip.verify_checksum()


def test_ipv6_fragment_header_fields() -> None:
    packet = build_udp(V6_SRC, V6_DST, 4000, 5000, bytes(range(256)) * 12)
    fragments = fragment_ip(packet, 1280, 0x12345678)
    assert [len(f) for f in fragments] == [1280, 1280, 48 + 3080 - 2 * 1232]
    for i, raw in enumerate(fragments):
        ip = Ipv6Packet.checked(raw)
        frag = ip.fragment()
        assert frag is not None and ip.next_header == 44  # the Fragment header
        assert (frag.ident, frag.next_header, frag.frag_offset) == (0x12345678, 17, 1232 * i)
        assert frag.more_frags == (i < 2)
    joined = defragment6([IPv6(bytes(f)) for f in fragments])
    assert IPv6ExtHdrFragment not in joined
    assert bytes(joined.payload) == bytes(packet[40:])


def test_mtu_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum of 68"):
        fragment_ip(build_udp(V4_SRC, V4_DST, 1, 2, bytes(100)), 60, 1)
    with pytest.raises(ValueError, match="minimum of 1280"):
        fragment_ip(build_udp(V6_SRC, V6_DST, 1, 2, bytes(2000)), 1200, 1)


@given(
    v6=st.booleans(),
    size=st.integers(0, 9000),
    mtu=st.integers(1280, 9000),
    ident=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**32),
)
def test_any_fragmentation_in_any_order_reassembles_to_the_same_bytes(
    v6: bool, size: int, mtu: int, ident: int, seed: int
) -> None:
    rng = random.Random(seed)
    src, dst = (V6_SRC, V6_DST) if v6 else (V4_SRC, V4_DST)
    packet = build_udp(src, dst, 1234, 5678, rng.randbytes(size))
    if not v6:
        # The fragments carry `ident` and no DF, as will the reassembled header.
        packet[4:8] = (ident & 0xFFFF).to_bytes(2, "big") + bytes(2)
        Ipv4Packet(packet).fill_checksum()
    fragments = fragment_ip(packet, mtu, ident)
    assert all(len(f) <= mtu for f in fragments)
    if len(fragments) == 1:
        assert fragments == [packet]
        return
    rng.shuffle(fragments)
    assert reassemble(fragments) == packet
