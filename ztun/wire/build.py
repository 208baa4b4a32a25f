"""Builders of complete, checksummed IP packets (for replies, RSTs, ICMP errors, tests).

The IP version follows the address type; every builder returns a fresh ``bytearray``
with no buffer exports left on it, so callers may still resize it.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

from ztun.wire import icmp, icmpv6
from ztun.wire._types import BytesLike
from ztun.wire._util import check_uint
from ztun.wire.checksum import internet_checksum, pseudo_header_sum
from ztun.wire.ip import parse_ip
from ztun.wire.ipv4 import Ipv4Packet, Ipv4Repr
from ztun.wire.ipv6 import Ipv6Repr
from ztun.wire.proto import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from ztun.wire.tcp import ACK, TcpOptions, TcpRepr
from ztun.wire.udp import UdpRepr

__all__ = [
    "Address",
    "build_icmp_echo",
    "build_icmp_unreachable",
    "build_tcp",
    "build_udp",
]

#: An IP address as builders accept it: an ``ipaddress`` object or 4/16 raw bytes.
Address: TypeAlias = IPv4Address | IPv6Address | bytes

_IPV4_LEN = 4
_IPV6_LEN = 16
_IPV4_HEADER_LEN = 20
_IPV6_HEADER_LEN = 40
_ICMP_HEADER = struct.Struct("!BBHHH")
_ICMP_HEADER_LEN = 8
_CHECKSUM_OFFSET = 2
_U16 = struct.Struct("!H")
_NO_OPTIONS = TcpOptions()

#: RFC 1812 sec. 4.3.2.3: an ICMPv4 error quotes as much of the original as fits in a
#: 576-byte datagram (RFC 792's "header + 64 bits" is the minimum).  Linux does the same.
_ICMPV4_ERROR_MAX = 576
#: RFC 4443 sec. 2.4 (c): as much as fits without exceeding the IPv6 minimum MTU.
_ICMPV6_ERROR_MAX = 1280
#: RFC 1812 sec. 4.3.2.5 / Linux ``icmp_send``: errors go out with precedence 6
#: ("internetwork control"), and ICMP is sent without DF.
_IPTOS_PREC_INTERNETCONTROL = 0xC0


def _raw(addr: Address) -> bytes:
    if isinstance(addr, IPv4Address | IPv6Address):
        return addr.packed
    if isinstance(addr, bytes | bytearray | memoryview) and len(addr) in (_IPV4_LEN, _IPV6_LEN):
        return bytes(addr)
    raise ValueError(f"not an IP address (IPv4Address/IPv6Address or 4/16 bytes): {addr!r}")


def _raw_pair(src: Address, dst: Address) -> tuple[bytes, bytes]:
    raw_src, raw_dst = _raw(src), _raw(dst)
    if len(raw_src) != len(raw_dst):
        raise ValueError(f"src {src!r} and dst {dst!r} are different IP versions")
    return raw_src, raw_dst


def _ip_packet(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    *,
    ttl: int,
    ident: int = 0,
    dont_frag: bool = True,
    tos: int = 0,
) -> tuple[bytearray, int]:
    """Allocate the whole packet and emit its IP header; return it and the header length."""
    if len(src) == _IPV4_LEN:
        repr4 = Ipv4Repr(
            IPv4Address(src),
            IPv4Address(dst),
            proto,
            payload_len,
            ttl=ttl,
            ident=ident,
            dont_frag=dont_frag,
            dscp_ecn=tos,
        )
        buf = bytearray(repr4.total_len)
        repr4.emit(buf)
        return buf, repr4.header_len
    repr6 = Ipv6Repr(
        IPv6Address(src), IPv6Address(dst), proto, payload_len, hop_limit=ttl, traffic_class=tos
    )
    buf = bytearray(repr6.total_len)
    repr6.emit(buf)
    return buf, repr6.header_len


def build_tcp(
    src: Address,
    dst: Address,
    src_port: int,
    dst_port: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = ACK,
    window: int = 65535,
    options: TcpOptions = _NO_OPTIONS,
    payload: BytesLike = b"",
    ttl: int = 64,
    ident: int = 0,
) -> bytearray:
    """A TCP segment in an IPv4 or IPv6 packet (``ttl`` is the hop limit for IPv6)."""
    raw_src, raw_dst = _raw_pair(src, dst)
    tcp = TcpRepr(src_port, dst_port, seq, ack, flags, window, 0, options, len(payload))
    buf, offset = _ip_packet(
        raw_src, raw_dst, IPPROTO_TCP, tcp.header_len + len(payload), ttl=ttl, ident=ident
    )
    tcp.emit(memoryview(buf)[offset:], raw_src, raw_dst, payload)
    return buf


def build_udp(
    src: Address,
    dst: Address,
    src_port: int,
    dst_port: int,
    payload: BytesLike,
    *,
    ttl: int = 64,
    ident: int = 0,
) -> bytearray:
    """A UDP datagram in an IPv4 or IPv6 packet, checksum always filled."""
    raw_src, raw_dst = _raw_pair(src, dst)
    udp = UdpRepr(src_port, dst_port, len(payload))
    buf, offset = _ip_packet(
        raw_src, raw_dst, IPPROTO_UDP, udp.header_len + len(payload), ttl=ttl, ident=ident
    )
    udp.emit(memoryview(buf)[offset:], raw_src, raw_dst, payload)
    return buf


def _icmp_packet(
    raw_src: bytes,
    raw_dst: bytes,
    icmp_type: int,
    code: int,
    rest_of_header: int,
    data: BytesLike,
    *,
    ttl: int,
    tos: int = 0,
) -> bytearray:
    """ICMPv4 or ICMPv6 message (by address length) with its checksum."""
    v4 = len(raw_src) == _IPV4_LEN
    proto = IPPROTO_ICMP if v4 else IPPROTO_ICMPV6
    msg_len = _ICMP_HEADER_LEN + len(data)
    buf, offset = _ip_packet(raw_src, raw_dst, proto, msg_len, ttl=ttl, dont_frag=False, tos=tos)
    _ICMP_HEADER.pack_into(
        buf, offset, icmp_type, code, 0, rest_of_header >> 16, rest_of_header & 0xFFFF
    )
    buf[offset + _ICMP_HEADER_LEN :] = data
    message = memoryview(buf)[offset:]
    initial = 0 if v4 else pseudo_header_sum(raw_src, raw_dst, proto, msg_len)
    _U16.pack_into(message, _CHECKSUM_OFFSET, internet_checksum(message, initial))
    return buf


def build_icmp_echo(
    src: Address,
    dst: Address,
    ident: int,
    seq: int,
    payload: BytesLike = b"",
    *,
    reply: bool = False,
    ttl: int = 64,
) -> bytearray:
    """An ICMP (IPv4) or ICMPv6 echo request, or reply with ``reply=True``.

    IPv4 ICMP goes out without DF, as the kernel sends its own echo replies.
    """
    check_uint("ident", ident, 16)
    check_uint("seq", seq, 16)
    raw_src, raw_dst = _raw_pair(src, dst)
    if len(raw_src) == _IPV4_LEN:
        icmp_type = icmp.ECHO_REPLY if reply else icmp.ECHO_REQUEST
    else:
        icmp_type = icmpv6.ECHO_REPLY if reply else icmpv6.ECHO_REQUEST
    return _icmp_packet(raw_src, raw_dst, icmp_type, 0, (ident << 16) | seq, payload, ttl=ttl)


def build_icmp_unreachable(
    original: BytesLike, src: Address, *, code: int, ttl: int = 64
) -> bytearray:
    """A destination-unreachable error about ``original``, sent from ``src`` to its source.

    ``original`` is the offending IP packet; the version of the error follows it.  The
    quote is as long as RFC 1812 (IPv4, 576 bytes total) or RFC 4443 (IPv6, 1280 bytes
    total) allow.  Whether an error may be sent at all (not about an ICMP error, a
    non-first fragment, a multicast or broadcast packet: RFC 1122 sec. 3.2.2, RFC 4443
    sec. 2.4 (e)) is the caller's policy.
    """
    pkt = parse_ip(original)
    raw_src = _raw(src)
    raw_dst = pkt.src
    if len(raw_src) != len(raw_dst):
        raise ValueError(f"error source {src!r} is not the original's IP version")
    if isinstance(pkt, Ipv4Packet):
        limit = _ICMPV4_ERROR_MAX - _IPV4_HEADER_LEN - _ICMP_HEADER_LEN
        return _icmp_packet(
            raw_src,
            raw_dst,
            icmp.DEST_UNREACHABLE,
            code,
            0,
            pkt.buf[:limit],
            ttl=ttl,
            tos=_IPTOS_PREC_INTERNETCONTROL,
        )
    limit = _ICMPV6_ERROR_MAX - _IPV6_HEADER_LEN - _ICMP_HEADER_LEN
    return _icmp_packet(
        raw_src, raw_dst, icmpv6.DEST_UNREACHABLE, code, 0, pkt.buf[:limit], ttl=ttl
    )
