"""UdpPacket / UdpRepr: captured DNS queries, the zero-checksum rules, hypothesis."""

from __future__ import annotations

import pytest
import wire_vectors as V
from hypothesis import given
from wire_helpers import addr_pairs, poisoned, udp_reprs

from ztun.wire import (
    Malformed,
    Truncated,
    UdpPacket,
    UdpRepr,
    build_udp,
    checksum_delta,
    internet_checksum,
    parse_ip,
    pseudo_header_sum,
)

# id 0xabcd, RD, one question: example.com A IN (what capture_vectors.py sent).
DNS_QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
V4_SRC, V4_DST = bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2])


def datagram(name: str) -> tuple[UdpPacket, bytes, bytes]:
    ip = parse_ip(bytearray(getattr(V, name)))
    offset = len(ip.buf) - len(ip.payload)
    return UdpPacket.checked(ip.buf[offset:]), ip.src, ip.dst


@pytest.mark.parametrize("name", ["IPV4_UDP_DNS_QUERY", "IPV6_UDP_DNS_QUERY"])
def test_dns_query(name: str) -> None:
    udp, src, dst = datagram(name)
    assert udp.dst_port == 53 and udp.length == 8 + len(DNS_QUERY)
    assert bytes(udp.payload) == DNS_QUERY
    assert udp.verify_checksum(src, dst)
    repr_ = UdpRepr.parse(udp, src, dst)
    assert repr_ == UdpRepr(udp.src_port, 53, len(DNS_QUERY))
    buf = poisoned(udp.length)
    repr_.emit(buf, src, dst, DNS_QUERY)
    assert bytes(buf) == bytes(udp.buf)


def test_zero_checksum_means_none_on_ipv4_only() -> None:
    udp, src, dst = datagram("IPV4_UDP_DNS_QUERY")
    udp.checksum = 0
    assert udp.verify_checksum(src, dst)
    udp6, src6, dst6 = datagram("IPV6_UDP_DNS_QUERY")
    udp6.checksum = 0
    assert not udp6.verify_checksum(src6, dst6)  # RFC 8200 sec. 8.1: must be dropped


def zero_sum_datagram() -> bytearray:
    """A datagram whose computed checksum is 0: a payload word cancels everything else."""
    payload = bytearray(4)
    buf = bytearray(12)
    UdpRepr(1234, 53, 4).emit(buf, V4_SRC, V4_DST, payload)
    buf[6:8] = b"\0\0"
    # Setting the last word to the current checksum makes the total sum -0.
    buf[10:12] = internet_checksum(buf, pseudo_header_sum(V4_SRC, V4_DST, 17, 12)).to_bytes(
        2, "big"
    )
    return buf


def test_computed_zero_is_sent_as_all_ones() -> None:
    buf = zero_sum_datagram()
    udp = UdpPacket.checked(buf)
    udp.fill_checksum(V4_SRC, V4_DST)
    assert udp.checksum == 0xFFFF
    assert udp.verify_checksum(V4_SRC, V4_DST)
    emitted = bytearray(12)
    UdpRepr(1234, 53, 4).emit(emitted, V4_SRC, V4_DST, buf[8:])
    assert emitted == buf


def test_adjust_checksum_keeps_zero_rules() -> None:
    udp, src, _dst = datagram("IPV4_UDP_DNS_QUERY")
    udp.checksum = 0  # absent: a rewrite must not invent one
    udp.adjust_checksum(checksum_delta(src, bytes([172, 19, 0, 2])))
    assert udp.checksum == 0
    # 0xffff stored for a computed 0; rewriting it must land on exactly what a recompute gives.
    buf = zero_sum_datagram()
    udp = UdpPacket.checked(buf)
    udp.fill_checksum(V4_SRC, V4_DST)
    new_src = bytes([10, 99, 0, 3])
    for src_before, src_after in ((V4_SRC, new_src), (new_src, V4_SRC)):
        udp.adjust_checksum(checksum_delta(src_before, src_after))
        expected = UdpPacket(bytearray(udp.buf))
        expected.fill_checksum(src_after, V4_DST)
        assert udp.checksum == expected.checksum
        assert udp.verify_checksum(src_after, V4_DST)


def test_length_field_cuts_trailing_bytes() -> None:
    buf = build_udp(V4_SRC, V4_DST, 1, 2, b"abc")
    udp = UdpPacket.checked(bytes(buf[20:]) + b"\xa5\xa5")
    assert bytes(udp.payload) == b"abc"


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (bytes(7), Truncated, "truncated"),
        (bytes(4) + (7).to_bytes(2, "big") + bytes(2), Malformed, "bad_length"),
        (bytes(4) + (9).to_bytes(2, "big") + bytes(2), Truncated, "truncated"),
    ],
    ids=["short", "length<8", "length>buf"],
)
def test_checked_refuses(data: bytes, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        UdpPacket.checked(data)
    assert getattr(info.value, "reason", None) == reason


@given(udp_reprs, addr_pairs)
def test_repr_round_trip(repr_: UdpRepr, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    payload = bytes(i & 0xFF for i in range(repr_.payload_len))
    buf = poisoned(repr_.header_len + repr_.payload_len)
    repr_.emit(buf, src, dst, payload)
    udp = UdpPacket.checked(buf)
    assert udp.checksum != 0
    assert UdpRepr.parse(udp, src, dst) == repr_
