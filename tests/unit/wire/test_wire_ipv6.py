"""Ipv6Packet / Ipv6Repr and the extension-header walk."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv6Address

import pytest
import wire_vectors as V
from hypothesis import given
from wire_helpers import ipv6_reprs, poisoned

from ztun.wire import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_EXT_HEADERS,
    Ipv6Packet,
    Ipv6Repr,
    Malformed,
    Truncated,
    WireError,
)

A, B = IPv6Address("fd00:99::1"), IPv6Address("fd00:99::2")
V6_VECTORS = {
    name: value
    for name, value in vars(V).items()
    if name.startswith("IPV6_") and isinstance(value, bytes)
}


def with_chain(*headers: tuple[int, bytes], upper: int = IPPROTO_UDP, tail: bytes = b"") -> bytes:
    """An IPv6 packet whose payload is ``headers`` (number, body-after-next-header) + tail.

    Each body already carries its own length byte; the next-header byte is filled in.
    """
    numbers = [number for number, _ in headers] + [upper]
    payload = b"".join(bytes([numbers[i + 1]]) + body for i, (_, body) in enumerate(headers))
    payload += tail
    fixed = Ipv6Repr(A, B, numbers[0], len(payload))
    buf = bytearray(40 + len(payload))
    fixed.emit(buf)
    buf[40:] = payload
    return bytes(buf)


def opts(units: int = 0) -> bytes:
    """Body of a hop-by-hop / destination-options / routing header of (units+1)*8 bytes."""
    return bytes([units]) + bytes(6 + 8 * units)


def frag(offset: int = 0, more: bool = False) -> bytes:
    return bytes([0]) + ((offset << 3) | more).to_bytes(2, "big") + (0x1234).to_bytes(4, "big")


def test_tcp_syn_fields() -> None:
    pkt = Ipv6Packet.checked(V.IPV6_TCP_SYN)
    assert pkt.version == 6
    assert (pkt.traffic_class, pkt.payload_len, pkt.next_header, pkt.hop_limit) == (0, 40, 6, 64)
    assert pkt.flow_label == int.from_bytes(V.IPV6_TCP_SYN[1:4], "big") & 0xFFFFF
    assert (pkt.src, pkt.dst) == (A.packed, B.packed)
    assert pkt.upper_layer() == (IPPROTO_TCP, 40)
    assert not pkt.is_fragment
    assert bytes(pkt.payload) == V.IPV6_TCP_SYN[40:]


@pytest.mark.parametrize("name", sorted(V6_VECTORS))
def test_emit_into_poison_matches_capture(name: str) -> None:
    captured = V6_VECTORS[name]
    buf = poisoned(40)
    Ipv6Repr.parse(Ipv6Packet.checked(captured)).emit(buf)
    assert bytes(buf) == captured[:40]


def test_hop_by_hop_and_fragment_captured() -> None:
    """Linux put the hop-by-hop header (router alert) before the fragment header."""
    first = Ipv6Packet.checked(V.IPV6_HBH_FRAG_FIRST)
    last = Ipv6Packet.checked(V.IPV6_HBH_FRAG_LAST)
    assert first.next_header == IPPROTO_HOPOPTS
    assert first.upper_layer() == (IPPROTO_UDP, 40 + 8 + 8)
    assert first.is_fragment and last.is_fragment
    assert last.upper_layer() == (IPPROTO_UDP, 56)  # ...but what sits there is data
    assert V.IPV6_HBH_FRAG_FIRST[56 + 2 : 56 + 4] == (5001).to_bytes(2, "big")


@pytest.mark.parametrize("name", ["IPV6_ICMP_ECHO_REQUEST", "IPV6_ICMP_PORT_UNREACH"])
def test_icmpv6_upper_layer(name: str) -> None:
    assert Ipv6Packet.checked(V6_VECTORS[name]).upper_layer() == (IPPROTO_ICMPV6, 40)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(IPPROTO_HOPOPTS, opts())], (IPPROTO_UDP, 48)),
        ([(IPPROTO_DSTOPTS, opts(2))], (IPPROTO_UDP, 64)),
        ([(IPPROTO_ROUTING, opts(1)), (IPPROTO_FRAGMENT, frag())], (IPPROTO_UDP, 64)),
        ([(IPPROTO_AH, bytes([4]) + bytes(22))], (IPPROTO_UDP, 64)),  # (4+2)*4 = 24 bytes
        (
            [
                (IPPROTO_HOPOPTS, opts()),
                (IPPROTO_DSTOPTS, opts()),
                (IPPROTO_ROUTING, opts()),
                (IPPROTO_FRAGMENT, frag()),
                (IPPROTO_DSTOPTS, opts()),
            ],
            (IPPROTO_UDP, 80),
        ),
    ],
    ids=["hbh", "dstopts-24", "routing+frag", "ah", "five"],
)
def test_walk(headers: list[tuple[int, bytes]], expected: tuple[int, int]) -> None:
    pkt = Ipv6Packet.checked(with_chain(*headers, tail=bytes(8)))
    assert pkt.upper_layer() == expected
    assert not pkt.is_fragment  # an atomic fragment (offset 0, M clear) is not one


@pytest.mark.parametrize("upper", [IPPROTO_ESP, IPPROTO_NONE, 253])
def test_walk_stops_at_unwalkable(upper: int) -> None:
    pkt = Ipv6Packet.checked(with_chain((IPPROTO_DSTOPTS, opts()), upper=upper))
    assert pkt.upper_layer() == (upper, 48)


@pytest.mark.parametrize(("offset", "more"), [(0, True), (185, False), (185, True)])
def test_fragment_detection(offset: int, more: bool) -> None:
    pkt = Ipv6Packet.checked(with_chain((IPPROTO_FRAGMENT, frag(offset, more)), tail=bytes(8)))
    assert pkt.is_fragment


def test_max_ext_headers_is_enough_and_bounded() -> None:
    ok = [(IPPROTO_DSTOPTS, opts())] * MAX_EXT_HEADERS
    assert Ipv6Packet.checked(with_chain(*ok)).upper_layer() == (
        IPPROTO_UDP,
        40 + 8 * MAX_EXT_HEADERS,
    )
    too_many = Ipv6Packet.checked(with_chain(*ok, (IPPROTO_DSTOPTS, opts())))
    with pytest.raises(Malformed) as info:
        too_many.upper_layer()
    assert info.value.reason == "bad_ext_header"


@pytest.mark.parametrize(
    "packet",
    [
        with_chain((IPPROTO_DSTOPTS, opts()), (IPPROTO_HOPOPTS, opts())),  # HBH not first
        with_chain((IPPROTO_DSTOPTS, bytes([5]) + bytes(6))),  # says 48 bytes, has 8
        with_chain((IPPROTO_ROUTING, opts()))[:-4],  # cut inside the header
        with_chain((IPPROTO_AH, bytes([200]) + bytes(6))),  # AH length past payload
    ],
    ids=["hbh-not-first", "dstopts-past-end", "routing-cut", "ah-past-end"],
)
def test_bad_chains_are_malformed(packet: bytes) -> None:
    # Fix the payload length so only the chain is wrong, not the fixed header.
    fixed = bytearray(packet)
    fixed[4:6] = (len(fixed) - 40).to_bytes(2, "big")
    pkt = Ipv6Packet.checked(fixed)
    with pytest.raises(Malformed) as info:
        pkt.upper_layer()
    assert info.value.reason == "bad_ext_header"
    with pytest.raises(Malformed):
        _ = pkt.is_fragment


def test_setters_write_through() -> None:
    buf = bytearray(V.IPV6_TCP_SYN)
    pkt = Ipv6Packet.checked(buf)
    pkt.src = IPv6Address("fdfe:dcba:9876::2").packed
    pkt.hop_limit = 3
    assert buf[8:24] == IPv6Address("fdfe:dcba:9876::2").packed and buf[7] == 3


def test_trailing_bytes_are_cut() -> None:
    pkt = Ipv6Packet.checked(V.IPV6_TCP_SYN + b"\xa5" * 3)
    assert len(pkt.buf) == len(V.IPV6_TCP_SYN)


@pytest.mark.parametrize(
    ("mutate", "error", "reason"),
    [
        (lambda b: b[:39], Truncated, "truncated"),
        (lambda b: b"\x40" + b[1:], Malformed, "bad_version"),
        (lambda b: b[:-1], Truncated, "truncated"),
    ],
    ids=["short", "version", "payload-cut"],
)
def test_checked_refuses(
    mutate: Callable[[bytes], bytes], error: type[WireError], reason: str
) -> None:
    with pytest.raises(error) as info:
        Ipv6Packet.checked(mutate(V.IPV6_TCP_SYN))
    assert info.value.reason == reason


def test_repr_refuses_big_flow_label() -> None:
    with pytest.raises(ValueError, match="flow_label"):
        Ipv6Repr(A, B, IPPROTO_TCP, 0, flow_label=1 << 20)


@given(ipv6_reprs)
def test_repr_round_trip(repr_: Ipv6Repr) -> None:
    buf = poisoned(repr_.total_len)
    repr_.emit(buf)
    assert Ipv6Repr.parse(Ipv6Packet.checked(buf)) == repr_
