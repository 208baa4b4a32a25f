"""Property tests: whatever bytes the TUN hands the stack, `receive` answers or counts a
drop -- it never raises (a raise stops the TUN pump, and ztun with it).

Inputs are arbitrary bytes and real packets (TCP, UDP, ICMP echo, both versions, IPv6
with extension headers, an atomic Fragment header among them) cut into fragments and
then damaged byte by byte, fed to stacks of every MTU the CLI accepts (576 up), with or
without an IPv6 address, in each ICMP mode.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztun.stack import IcmpMode, SystemStack
from ztun.wire import Malformed, WireError, build_icmp_echo, build_tcp, build_udp
from ztun.wire.fragment import IPV6_MIN_MTU, fragment_ip
from ztun.wire.proto import IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
APP4, DST4 = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("192.0.2.9")
APP6, DST6 = ipaddress.IPv6Address("fdfe:dcba:9876::1"), ipaddress.IPv6Address("2001:db8::9")
_IPV6_NEXT_HEADER, _IPV6_PAYLOAD_LEN, _IPV6_HEADER_LEN = 6, 4, 40


def with_extension_header(packet: bytearray, kind: int) -> bytearray:
    """`packet` (IPv6) with one 8-byte extension header after the fixed header: Hop-by-Hop
    or Destination Options (PadN only), or an atomic Fragment header (RFC 8200 sec. 4.5:
    offset 0, M 0)."""
    first = packet[_IPV6_NEXT_HEADER]
    if kind == IPPROTO_FRAGMENT:
        header = bytes([first, 0, 0, 0]) + (0x1234).to_bytes(4, "big")
    else:
        header = bytes([first, 0, 1, 4, 0, 0, 0, 0])  # PadN of 4: 8 bytes in all
    out = bytearray(packet[:_IPV6_HEADER_LEN]) + header + packet[_IPV6_HEADER_LEN:]
    out[_IPV6_NEXT_HEADER] = kind
    out[_IPV6_PAYLOAD_LEN : _IPV6_PAYLOAD_LEN + 2] = (len(out) - _IPV6_HEADER_LEN).to_bytes(
        2, "big"
    )
    return out


@st.composite
def packets(draw: st.DrawFn) -> bytearray:
    v6 = draw(st.booleans())
    app, dst = (APP6, DST6) if v6 else (APP4, DST4)
    size = draw(st.sampled_from([0, 1, 100, 1300, 2000, 3000]))
    payload = bytes(draw(st.integers(0, 255)) for _ in range(1)) * size
    kind = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if kind == "tcp":
        packet = build_tcp(app, dst, 40000, 80, seq=1, flags=0x02, payload=payload[:1400])
    elif kind == "udp":
        packet = build_udp(app, dst, 40000, 53, payload)
    else:
        packet = build_icmp_echo(app, dst, 7, 1, payload)
    if v6:
        for ext in draw(
            st.lists(
                st.sampled_from([IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT]), max_size=2
            )
        ):
            packet = with_extension_header(packet, ext)
    return packet


def fragment_everything(packet: bytearray, size: int, ident: int) -> list[bytearray]:
    """IPv6 fragments as a sender may make them (not as ztun does): everything after
    the fixed header is fragmentable, an atomic Fragment header there included -- the
    reassembled datagram then carries a Fragment header of its own."""
    body = packet[_IPV6_HEADER_LEN:]
    step = max(8, size // 8 * 8)
    out = []
    for start in range(0, len(body), step):
        more = start + step < len(body)
        header = bytearray(packet[:_IPV6_HEADER_LEN])
        header[_IPV6_NEXT_HEADER] = IPPROTO_FRAGMENT
        chunk = body[start : start + step]
        frag = bytes([packet[_IPV6_NEXT_HEADER], 0]) + (start | more).to_bytes(2, "big")
        piece = header + frag + ident.to_bytes(4, "big") + chunk
        piece[_IPV6_PAYLOAD_LEN : _IPV6_PAYLOAD_LEN + 2] = (8 + len(chunk)).to_bytes(2, "big")
        out.append(piece)
    return out


@st.composite
def pieces(draw: st.DrawFn) -> list[bytearray]:
    """What the TUN could hand over: arbitrary bytes, or a packet's fragments, damaged."""
    if draw(st.integers(0, 3)) == 0:
        return [bytearray(draw(st.binary(max_size=120)))]
    packet = draw(packets())
    floor = IPV6_MIN_MTU if packet[0] >> 4 == 6 else 68
    size = draw(st.integers(floor, 1500))
    if packet[0] >> 4 == 6 and draw(st.booleans()):
        out = fragment_everything(packet, size - 48, 0x5A5A)
    else:
        try:
            out = fragment_ip(packet, size, 0x5A5A)
        except WireError:  # it already carries a Fragment header: sent whole
            out = [packet]
    for piece in out:
        for offset, value in draw(
            st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=2)
        ):
            if offset < len(piece):
                piece[offset] = value
        cut = draw(st.integers(0, 3))
        if cut:
            del piece[-cut:]
    return draw(st.permutations(out))


@settings(max_examples=400, deadline=None)
@given(
    inputs=st.lists(pieces(), min_size=1, max_size=4),
    mtu=st.integers(576, 1500),
    v6=st.booleans(),
    icmp=st.sampled_from(list(IcmpMode)),
    partial=st.booleans(),
)
def test_receive_never_raises(  # type: ignore[no-untyped-def]
    inputs, mtu, v6, icmp, partial
) -> None:
    stack = SystemStack(inet4=INET4, inet6=INET6 if v6 else None, mtu=mtu, icmp=icmp)
    now = 0.0
    for group in inputs:
        for piece in group:
            now += 0.01
            out = stack.receive(memoryview(bytearray(piece)), now, partial)
            if isinstance(out, list):  # fragments ztun made: each fits the link
                for fragment in out:
                    limit = max(mtu, IPV6_MIN_MTU) if fragment[0] >> 4 == 6 else mtu
                    assert len(fragment) <= limit


@given(size=st.integers(1281, 9000), mtu=st.integers(576, 1279))
def test_ipv6_is_fragmented_at_1280_on_a_smaller_mtu(size: int, mtu: int) -> None:
    """RFC 8200 sec. 5: a link that carries IPv6 carries 1280 bytes, whatever the TUN's
    MTU for IPv4 (macOS and Windows keep IPv6's MTU at 1280 or more on their own)."""
    stack = SystemStack(inet4=INET4, inet6=None, mtu=mtu)
    reply = build_icmp_echo(DST6, APP6, 7, 1, bytes(size - 48), reply=True)
    fragments = stack.fragment(reply)
    assert len(fragments) > 1 and all(len(f) <= IPV6_MIN_MTU for f in fragments)
    assert max(len(f) for f in fragments) > mtu or size - 48 < mtu


def test_a_fragmented_2000_byte_ipv6_ping_to_a_1200_byte_stack_is_answered() -> None:
    """The reviewer's case: it raised ValueError ("MTU 1200 is below IPv6's minimum")
    out of `receive`, which stopped the TUN pump."""
    stack = SystemStack(inet4=INET4, inet6=None, mtu=1200)
    request = build_icmp_echo(APP6, DST6, 7, 1, bytes(2000))
    outs = [stack.receive(memoryview(f), 0.0) for f in fragment_ip(request, 1280, 99)]
    assert outs[0] is None and isinstance(outs[1], list)
    # 40 + 8 + 2000 bytes: 1232 of the 2008 after the fixed header in the first, each
    # fragment with the fixed header and a Fragment header (8) of its own.
    assert [len(f) for f in outs[1]] == [40 + 8 + 1232, 40 + 8 + 776]


def test_a_reassembled_datagram_with_a_second_fragment_header_is_counted() -> None:
    """A 3000-byte echo request with an atomic Fragment header, itself sent in fragments:
    the reassembled datagram carries a Fragment header again, which RFC 8200 sec. 4.5
    never makes (a packet is fragmented once, by its source): counted, not answered."""
    stack = SystemStack(inet4=INET4, inet6=INET6, mtu=1500)
    request = with_extension_header(
        build_icmp_echo(APP6, DST6, 7, 1, bytes(3000)), IPPROTO_FRAGMENT
    )
    outs = [stack.receive(memoryview(f), 0.0) for f in fragment_everything(request, 1400, 5)]
    assert outs == [None, None, None]
    assert stack.counters["malformed_bad_ext_header"] == 1


def test_fragmenting_a_fragment_is_malformed_input() -> None:
    """What a packet holds is the input's fault: a WireError (counted by the stack), not
    the ValueError reserved for a caller's bad MTU."""
    packet = with_extension_header(build_udp(APP6, DST6, 1, 2, bytes(2000)), IPPROTO_FRAGMENT)
    with pytest.raises(Malformed) as err:
        fragment_ip(packet, 1280, 1)
    assert err.value.reason == "already_fragment"
