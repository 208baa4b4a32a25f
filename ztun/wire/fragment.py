"""Fragmenting an IP packet that is larger than the link's MTU (RFC 791, RFC 8200 sec. 4.5).

A datagram ztun builds for the app (a UDP reply, an echo reply) can be larger than the
TUN's MTU; a router or the sending host would fragment it, so ztun does before writing it.
The identification is the caller's: it comes from an injected generator (RFC 7739 wants
it unpredictable), so emitted bytes stay deterministic under test.
"""

from __future__ import annotations

import struct

from ztun.wire._types import BytesLike
from ztun.wire.checksum import internet_checksum
from ztun.wire.errors import Malformed
from ztun.wire.ip import parse_ip
from ztun.wire.ipv4 import Ipv4Packet
from ztun.wire.ipv6 import Ipv6Packet
from ztun.wire.proto import IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING

__all__ = ["IPV4_MIN_MTU", "IPV6_MIN_MTU", "fragment_ip"]

_U16 = struct.Struct("!H")
_FRAGMENT_HEADER = struct.Struct("!BBHI")  # next header, reserved, offset|M, identification

#: RFC 791: every IPv4 module must forward a 68-byte datagram unfragmented.
IPV4_MIN_MTU = 68
#: RFC 8200 sec. 5: every IPv6 link carries 1280-byte packets.
IPV6_MIN_MTU = 1280

_IPV4_TOTAL_LEN, _IPV4_IDENT, _IPV4_FLAGS_FRAG, _IPV4_CHECKSUM = 2, 4, 6, 10
_IPV4_MIN_HEADER = 20
_IPV4_MF = 0x2000
_IPV6_PAYLOAD_LEN, _IPV6_NEXT_HEADER, _IPV6_HEADER_LEN = 4, 6, 40
_FRAGMENT_HEADER_LEN = 8
_UNIT = 8  # fragment offsets count 8-octet units in both versions
_OPTION_EOL, _OPTION_NOP = 0, 1
_OPTION_COPIED = 0x80  # RFC 791 sec. 3.1: the option is copied into every fragment


def fragment_ip(packet: BytesLike, mtu: int, ident: int) -> list[bytearray]:
    """`packet` as fragments of at most `mtu` bytes each (one copy when it already fits).

    `ident`: the Identification of an IPv6 Fragment header (32 bits) or, for IPv4, the
    header's own (16 bits: the low half is used). IPv4 fragments are sent without DF:
    ztun is the source of the packets it fragments, so DF is its own to clear.
    """
    ip = parse_ip(packet)
    if len(ip.buf) <= mtu:
        return [bytearray(ip.buf)]
    if isinstance(ip, Ipv4Packet):
        return _fragment_v4(ip, mtu, ident & 0xFFFF)
    return _fragment_v6(ip, mtu, ident & 0xFFFFFFFF)


def _copied_options(options: memoryview) -> bytes:
    """The options a non-first fragment carries (copied flag set), padded to 4 bytes."""
    kept = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPTION_EOL:
            break
        if kind == _OPTION_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            raise Malformed("bad_option", f"IPv4 option {kind} at {i} overruns the header")
        length = options[i + 1]
        if kind & _OPTION_COPIED:
            kept += options[i : i + length]
        i += length
    kept += bytes(-len(kept) % 4)  # EOL padding
    return bytes(kept)


def _fragment_v4(ip: Ipv4Packet, mtu: int, ident: int) -> list[bytearray]:
    if mtu < IPV4_MIN_MTU:
        raise ValueError(f"MTU {mtu} is below IPv4's minimum of {IPV4_MIN_MTU}")
    buf = ip.buf
    header_len = ip.header_len
    first_header = bytes(buf[:header_len])
    later_header = first_header[:_IPV4_MIN_HEADER] + _copied_options(ip.options)
    payload = ip.payload
    base = ip.frag_offset  # a fragment can itself be fragmented further
    last_more = ip.more_frags
    fragments: list[bytearray] = []
    start = 0
    while start < len(payload):
        header = first_header if not fragments else later_header
        room = (mtu - len(header)) & ~(_UNIT - 1)
        end = min(start + room, len(payload))
        more = end < len(payload) or last_more
        out = bytearray(header) + payload[start:end]
        out[0] = (out[0] & 0xF0) | (len(header) >> 2)
        _U16.pack_into(out, _IPV4_TOTAL_LEN, len(out))
        _U16.pack_into(out, _IPV4_IDENT, ident)
        _U16.pack_into(out, _IPV4_FLAGS_FRAG, ((base + start) // _UNIT) | (_IPV4_MF if more else 0))
        _U16.pack_into(out, _IPV4_CHECKSUM, 0)
        _U16.pack_into(out, _IPV4_CHECKSUM, internet_checksum(memoryview(out)[: len(header)]))
        fragments.append(out)
        start = end
    return fragments


def _unfragmentable_len(ip: Ipv6Packet) -> tuple[int, int]:
    """(length of the Unfragmentable Part, offset of the Next Header byte that ends it).

    RFC 8200 sec. 4.5: the fixed header plus the headers routers en route process --
    Hop-by-Hop, Routing, and Destination Options that come before a Routing header.
    """
    buf = ip.buf
    link = _IPV6_NEXT_HEADER
    offset = _IPV6_HEADER_LEN
    next_header = buf[link]
    end = offset
    while next_header in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
        if offset + 2 > len(buf):
            raise Malformed("bad_ext_header", f"extension header at {offset} past payload")
        length = (buf[offset + 1] + 1) * _UNIT
        following = buf[offset]
        if next_header == IPPROTO_DSTOPTS and following != IPPROTO_ROUTING:
            break  # options for the final destination: fragmentable
        link = offset
        offset += length
        end = offset
        next_header = following
    if next_header == IPPROTO_FRAGMENT:
        # RFC 8200 sec. 4.5: only the source fragments, once. What the packet holds is
        # the input's fault, not the caller's: a WireError, counted by the stack.
        raise Malformed("already_fragment", "the packet already carries a Fragment header")
    return end, link


def _fragment_v6(ip: Ipv6Packet, mtu: int, ident: int) -> list[bytearray]:
    if mtu < IPV6_MIN_MTU:
        raise ValueError(f"MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}")
    buf = ip.buf
    unfrag_len, link = _unfragmentable_len(ip)
    next_header = buf[link]
    unfragmentable = bytearray(buf[:unfrag_len])
    unfragmentable[link] = IPPROTO_FRAGMENT
    fragmentable = buf[unfrag_len:]
    room = (mtu - unfrag_len - _FRAGMENT_HEADER_LEN) & ~(_UNIT - 1)
    fragments: list[bytearray] = []
    start = 0
    while start < len(fragmentable):
        end = min(start + room, len(fragmentable))
        more = end < len(fragmentable)
        out = bytearray(unfragmentable)
        out += _FRAGMENT_HEADER.pack(next_header, 0, start | int(more), ident)
        out += fragmentable[start:end]
        _U16.pack_into(out, _IPV6_PAYLOAD_LEN, len(out) - _IPV6_HEADER_LEN)
        fragments.append(out)
        start = end
    return fragments
