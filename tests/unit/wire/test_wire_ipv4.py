"""Ipv4Packet / Ipv4Repr against captured packets, RFC rules and hypothesis."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import pytest
import wire_vectors as V
from hypothesis import given
from scapy.layers.inet import IP, IPOption_Router_Alert
from wire_helpers import ipv4_reprs, poisoned

from ztun.wire import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    Ipv4Packet,
    Ipv4Repr,
    Malformed,
    Truncated,
    WireError,
    checksum_delta,
)

A, B = IPv4Address("10.99.0.1"), IPv4Address("10.99.0.2")
V4_VECTORS = {
    name: value
    for name, value in vars(V).items()
    if name.startswith("IPV4_") and isinstance(value, bytes)
}


def test_syn_fields() -> None:
    pkt = Ipv4Packet.checked(V.IPV4_TCP_SYN)
    assert (pkt.version, pkt.header_len, pkt.total_len) == (4, 20, 60)
    assert (pkt.dscp_ecn, pkt.ttl, pkt.protocol) == (0, 64, IPPROTO_TCP)
    assert pkt.dont_frag and not pkt.more_frags and pkt.frag_offset == 0
    assert not pkt.is_fragment
    # Known answers of the committed capture (update if capture_vectors.py is rerun).
    assert pkt.ident == 0xAC19
    assert pkt.checksum == 0x79DA
    assert (pkt.src, pkt.dst) == (A.packed, B.packed)
    assert len(pkt.options) == 0
    assert bytes(pkt.payload) == V.IPV4_TCP_SYN[20:]
    assert pkt.verify_checksum()


@pytest.mark.parametrize("name", sorted(V4_VECTORS))
def test_captured_headers_verify(name: str) -> None:
    assert Ipv4Packet.checked(V4_VECTORS[name]).verify_checksum()


@pytest.mark.parametrize("name", sorted(V4_VECTORS))
def test_emit_into_poison_matches_capture(name: str) -> None:
    """Parse a real header, emit it into 0xa5s: every byte written, checksum the kernel's."""
    captured = V4_VECTORS[name]
    repr_ = Ipv4Repr.parse(Ipv4Packet.checked(captured))
    buf = poisoned(repr_.header_len)
    repr_.emit(buf)
    assert bytes(buf) == captured[: repr_.header_len]


def test_fragments() -> None:
    first = Ipv4Packet.checked(V.IPV4_UDP_FRAG_FIRST)
    last = Ipv4Packet.checked(V.IPV4_UDP_FRAG_LAST)
    assert first.is_fragment and first.more_frags and first.frag_offset == 0
    assert last.is_fragment and not last.more_frags
    assert last.frag_offset == len(first.payload) == 1480
    assert first.ident == last.ident
    assert first.protocol == last.protocol == IPPROTO_UDP
    # 2000-byte datagram + 8-byte UDP header, split over both fragments.
    assert len(first.payload) + len(last.payload) == 2008
    assert Ipv4Repr.parse(last).frag_offset == 1480


def test_view_is_zero_copy_and_writable() -> None:
    buf = bytearray(V.IPV4_TCP_SYN)
    pkt = Ipv4Packet.checked(buf)
    pkt.ttl = 1
    pkt.src = bytes([172, 19, 0, 2])
    assert buf[8] == 1 and buf[12:16] == bytes([172, 19, 0, 2])
    assert not pkt.verify_checksum()
    pkt.fill_checksum()
    assert pkt.verify_checksum()
    pkt.payload[0] = 0xFF  # the payload view writes through too
    assert buf[20] == 0xFF


def test_read_only_buffer_refuses_writes() -> None:
    pkt = Ipv4Packet.checked(V.IPV4_TCP_SYN)
    with pytest.raises(TypeError):
        pkt.ttl = 1


def test_adjust_checksum_after_address_rewrite() -> None:
    buf = bytearray(V.IPV4_TCP_SYN)
    pkt = Ipv4Packet.checked(buf)
    new = bytes([172, 19, 0, 1])
    delta = checksum_delta(pkt.dst, new)
    pkt.dst = new
    pkt.adjust_checksum(delta)
    assert pkt.verify_checksum()


def test_trailing_padding_is_cut() -> None:
    pkt = Ipv4Packet.checked(V.IPV4_TCP_SYN + b"\0" * 6)  # Ethernet minimum-frame padding
    assert len(pkt.buf) == 60
    assert bytes(pkt.payload) == V.IPV4_TCP_SYN[20:]


@pytest.mark.parametrize(
    ("mutate", "error", "reason"),
    [
        (lambda b: b[:19], Truncated, "truncated"),
        (lambda b: b"", Truncated, "truncated"),
        (lambda b: b"\x65" + b[1:], Malformed, "bad_version"),
        (lambda b: b"\x44" + b[1:], Malformed, "bad_ihl"),
        (lambda b: b"\x4f" + b[1:40], Truncated, "truncated"),  # IHL 60 > 40 bytes
        (lambda b: b[:2] + (19).to_bytes(2, "big") + b[4:], Malformed, "bad_length"),
        (lambda b: b[:2] + (61).to_bytes(2, "big") + b[4:], Truncated, "truncated"),
        (lambda b: b[:59], Truncated, "truncated"),
    ],
    ids=["short", "empty", "version", "ihl", "ihl-past-end", "total<ihl", "total>buf", "cut"],
)
def test_checked_refuses(
    mutate: Callable[[bytes], bytes], error: type[WireError], reason: str
) -> None:
    with pytest.raises(error) as info:
        Ipv4Packet.checked(mutate(V.IPV4_TCP_SYN))
    assert info.value.reason == reason


def test_parse_verifies_checksum_by_default() -> None:
    bad = bytearray(V.IPV4_TCP_SYN)
    bad[10] ^= 1
    with pytest.raises(Malformed) as info:
        Ipv4Repr.parse(Ipv4Packet.checked(bad))
    assert info.value.reason == "bad_checksum"
    assert Ipv4Repr.parse(Ipv4Packet.checked(bad), verify_checksum=False).src == A


def test_options_match_scapy() -> None:
    """RFC 2113 Router Alert: our emitted header equals scapy's, byte for byte."""
    alert = bytes(IPOption_Router_Alert())
    repr_ = Ipv4Repr(A, B, 2, 8, ttl=1, ident=7, dont_frag=False, dscp_ecn=0xC0, options=alert)
    buf = poisoned(repr_.total_len)
    repr_.emit(buf)
    buf[repr_.header_len :] = bytes(8)
    reference = IP(
        src=str(A), dst=str(B), proto=2, ttl=1, id=7, tos=0xC0, options=[IPOption_Router_Alert()]
    ) / (b"\0" * 8)
    assert bytes(buf) == bytes(reference)
    pkt = Ipv4Packet.checked(buf)
    assert pkt.header_len == 24 and bytes(pkt.options) == alert
    assert Ipv4Repr.parse(pkt) == repr_


@pytest.mark.parametrize(
    "kwargs",
    [
        {"options": b"\x01\x01\x01"},
        {"options": b"\x01" * 44},
        {"ttl": 256},
        {"frag_offset": 3},
        {"payload_len": 65536},
    ],
)
def test_repr_refuses_impossible_values(kwargs: dict[str, Any]) -> None:
    base = Ipv4Repr(A, B, IPPROTO_TCP, 0)
    with pytest.raises(ValueError):
        dataclasses.replace(base, **kwargs)


def test_emit_refuses_short_buffer() -> None:
    with pytest.raises(ValueError, match="need 20"):
        Ipv4Repr(A, B, IPPROTO_TCP, 0).emit(bytearray(19))


@given(ipv4_reprs)
def test_repr_round_trip(repr_: Ipv4Repr) -> None:
    buf = poisoned(repr_.total_len)
    repr_.emit(buf)
    pkt = Ipv4Packet.checked(buf)
    assert pkt.verify_checksum()
    assert Ipv4Repr.parse(pkt) == repr_
