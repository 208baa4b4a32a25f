"""IPv6 header (RFC 8200): a zero-copy view, the extension-header walk, and a repr."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Self

from ztun.wire._types import BytesLike, WritableBuffer
from ztun.wire._util import check_room, check_uint
from ztun.wire.errors import Malformed, Truncated
from ztun.wire.proto import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
)

__all__ = ["MAX_EXT_HEADERS", "Ipv6Fragment", "Ipv6Header", "Ipv6Packet", "Ipv6Repr"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# version/class/flow, payload length, next header, hop limit, src, dst.
_HEADER = struct.Struct("!IHBB16s16s")

#: Upper bound on extension headers walked per packet.  RFC 8200 sec. 4.1 allows each
#: header once (destination options twice), so more than this is an attack or garbage,
#: and the bound keeps the walk O(1) per packet whatever the payload length.
MAX_EXT_HEADERS = 8

#: Extension headers whose length field counts 8-octet units beyond the first 8.
_EXT_8OCTET = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
_EXT_ALL = _EXT_8OCTET | {IPPROTO_FRAGMENT, IPPROTO_AH}


@dataclass(frozen=True, slots=True)
class Ipv6Fragment:
    """Where a packet's Fragment header (RFC 8200 sec. 4.5) is and what it says.

    ``frag_offset`` is in bytes (the field counts 8-octet units, already a multiple of 8
    in place); ``link_offset`` is the Next Header byte that names the Fragment header
    (reassembly rewrites it); ``upper_protocol``/``upper_offset`` are the upper-layer
    header after the rest of the chain (for a non-first fragment: the Fragment header's
    Next Header and where its data begins, as nothing after it can be walked).
    """

    header_offset: int
    link_offset: int
    next_header: int
    frag_offset: int
    more_frags: bool
    ident: int
    upper_protocol: int
    upper_offset: int

    @property
    def data_offset(self) -> int:
        """Where this fragment's data (the fragmentable part's bytes) begins."""
        return self.header_offset + Ipv6Header.FRAG_LEN

    @property
    def is_atomic(self) -> bool:
        """RFC 6946: offset 0 and M clear -- a whole datagram with a Fragment header."""
        return self.frag_offset == 0 and not self.more_frags


class Ipv6Header:
    """Field offsets of the IPv6 fixed header and of extension headers (RFC 8200 sec. 3, 4)."""

    VER_TC_FLOW = 0
    PAYLOAD_LEN = 4
    NEXT_HEADER = 6
    HOP_LIMIT = 7
    SRC = slice(8, 24)
    DST = slice(24, 40)
    HEADER_LEN = 40
    VERSION = 6
    TC_SHIFT = 20
    TC_MASK = 0xFF
    FLOW_MASK = 0xFFFFF

    # Extension headers, relative to their start.
    EXT_NEXT_HEADER = 0
    EXT_LEN = 1
    EXT_MIN_LEN = 8
    EXT_UNIT = 8
    AH_UNIT = 4
    #: AH's length counts 4-octet units minus 2 (RFC 4302 sec. 2.2).
    AH_LEN_BIAS = 2
    FRAG_OFFSET_FLAGS = 2
    FRAG_LEN = 8
    #: Fragment offset (13 bits, 8-octet units) and the M flag; bits 1-2 are reserved.
    FRAG_OFFSET_MASK = 0xFFF8
    FRAG_M = 0x0001
    FRAG_IDENT = 4


class Ipv6Packet:
    """A view of an IPv6 packet over a buffer; see :class:`ztun.wire.Ipv4Packet`."""

    __slots__ = ("buf",)

    buf: memoryview

    def __init__(self, buf: BytesLike) -> None:
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)

    @classmethod
    def checked(cls, buf: BytesLike) -> Self:
        """Validate the fixed header and payload length; cut ``.buf`` to 40 + payload_len.

        The extension-header chain is validated lazily by :meth:`upper_layer`, so packets
        that are only counted or dropped never pay for the walk.  Jumbograms (payload
        length 0 with a hop-by-hop Jumbo option, RFC 2675) are not supported: their
        payload reads as empty.
        """
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(mv)
        if size < Ipv6Header.HEADER_LEN:
            raise Truncated("truncated", f"IPv6 header needs 40 bytes, got {size}")
        version = mv[Ipv6Header.VER_TC_FLOW] >> 4
        if version != Ipv6Header.VERSION:
            raise Malformed("bad_version", f"IPv6 version field is {version}")
        total_len = Ipv6Header.HEADER_LEN + _U16.unpack_from(mv, Ipv6Header.PAYLOAD_LEN)[0]
        if total_len > size:
            raise Truncated("truncated", f"IPv6 packet length {total_len} > buffer {size}")
        view = object.__new__(cls)  # skips __init__'s isinstance: once per packet
        view.buf = mv if total_len == size else mv[:total_len]
        return view

    @property
    def version(self) -> int:
        return self.buf[Ipv6Header.VER_TC_FLOW] >> 4

    @property
    def traffic_class(self) -> int:
        word: int = _U32.unpack_from(self.buf, Ipv6Header.VER_TC_FLOW)[0]
        return (word >> Ipv6Header.TC_SHIFT) & Ipv6Header.TC_MASK

    @property
    def flow_label(self) -> int:
        word: int = _U32.unpack_from(self.buf, Ipv6Header.VER_TC_FLOW)[0]
        return word & Ipv6Header.FLOW_MASK

    @property
    def payload_len(self) -> int:
        value: int = _U16.unpack_from(self.buf, Ipv6Header.PAYLOAD_LEN)[0]
        return value

    @property
    def next_header(self) -> int:
        """Next header of the fixed header (may be an extension; see :meth:`upper_layer`)."""
        return self.buf[Ipv6Header.NEXT_HEADER]

    @property
    def hop_limit(self) -> int:
        return self.buf[Ipv6Header.HOP_LIMIT]

    @hop_limit.setter
    def hop_limit(self, value: int) -> None:
        self.buf[Ipv6Header.HOP_LIMIT] = value

    @property
    def src(self) -> bytes:
        return self.buf[Ipv6Header.SRC].tobytes()

    @src.setter
    def src(self, value: bytes) -> None:
        self.buf[Ipv6Header.SRC] = value

    @property
    def dst(self) -> bytes:
        return self.buf[Ipv6Header.DST].tobytes()

    @dst.setter
    def dst(self, value: bytes) -> None:
        self.buf[Ipv6Header.DST] = value

    @property
    def payload(self) -> memoryview:
        """Everything after the fixed header, extension headers included."""
        buf = self.buf
        return buf[
            Ipv6Header.HEADER_LEN : Ipv6Header.HEADER_LEN
            + _U16.unpack_from(buf, Ipv6Header.PAYLOAD_LEN)[0]
        ]

    # -- extension headers --------------------------------------------------------

    def _walk(self) -> tuple[int, int, int, int]:
        """Walk the extension chain: (upper protocol, its offset, the Fragment header's
        offset or -1, the offset of the Next Header byte that names it)."""
        buf = self.buf
        next_header = buf[Ipv6Header.NEXT_HEADER]
        offset = Ipv6Header.HEADER_LEN
        if next_header not in _EXT_ALL:  # the common case: TCP/UDP/ICMPv6 right away
            return next_header, offset, -1, -1
        end = len(buf)
        fragment_at = link = -1
        link_here = Ipv6Header.NEXT_HEADER
        for index in range(MAX_EXT_HEADERS):
            if next_header not in _EXT_ALL:
                return next_header, offset, fragment_at, link
            if next_header == IPPROTO_HOPOPTS and index:
                # RFC 8200 sec. 4.1: hop-by-hop options only right after the fixed header.
                raise Malformed("bad_ext_header", "hop-by-hop header not first")
            if offset + Ipv6Header.EXT_MIN_LEN > end:
                raise Malformed("bad_ext_header", f"extension header at {offset} past payload")
            if next_header == IPPROTO_FRAGMENT:
                if fragment_at >= 0:
                    # RFC 8200 sec. 4.1: each header at most once; two Fragment headers
                    # would make reassembly ambiguous.
                    raise Malformed("bad_ext_header", "two fragment headers")
                fragment_at, link = offset, link_here
                length = Ipv6Header.FRAG_LEN
                if (
                    _U16.unpack_from(buf, offset + Ipv6Header.FRAG_OFFSET_FLAGS)[0]
                    & Ipv6Header.FRAG_OFFSET_MASK
                ):
                    # A non-first fragment: what follows is data, not headers to walk.
                    return buf[offset + Ipv6Header.EXT_NEXT_HEADER], offset + length, offset, link
            elif next_header == IPPROTO_AH:
                length = (
                    buf[offset + Ipv6Header.EXT_LEN] + Ipv6Header.AH_LEN_BIAS
                ) * Ipv6Header.AH_UNIT
            else:
                length = (buf[offset + Ipv6Header.EXT_LEN] + 1) * Ipv6Header.EXT_UNIT
            next_header = buf[offset + Ipv6Header.EXT_NEXT_HEADER]
            link_here = offset + Ipv6Header.EXT_NEXT_HEADER
            offset += length
            if offset > end:
                raise Malformed("bad_ext_header", f"extension header ends at {offset} > {end}")
        if next_header in _EXT_ALL:
            raise Malformed("bad_ext_header", f"more than {MAX_EXT_HEADERS} extension headers")
        return next_header, offset, fragment_at, link

    def upper_layer(self) -> tuple[int, int]:
        """(protocol, offset from the start of the packet) of the upper-layer header.

        Walks hop-by-hop, routing, fragment, destination-options and AH headers, at
        most :data:`MAX_EXT_HEADERS` of them.  ESP and unknown numbers end the walk and
        are returned as the protocol, as is 59 (no next header).  For a non-first
        fragment the bytes at the offset are fragment data: check :attr:`is_fragment`.
        """
        next_header, offset, _, _ = self._walk()
        return next_header, offset

    @property
    def is_fragment(self) -> bool:
        """True if a fragment header has a non-zero offset or the M flag (may raise Malformed).

        An atomic fragment (offset 0, M clear: RFC 6946) is not one: it is processed as a
        whole datagram, apart from any reassembly.
        """
        at = self._walk()[2]
        if at < 0:
            return False
        word: int = _U16.unpack_from(self.buf, at + Ipv6Header.FRAG_OFFSET_FLAGS)[0]
        return bool(word & (Ipv6Header.FRAG_OFFSET_MASK | Ipv6Header.FRAG_M))

    def fragment(self) -> Ipv6Fragment | None:
        """The Fragment header, if the packet has one (may raise Malformed)."""
        upper_protocol, upper, at, link = self._walk()
        if at < 0:
            return None
        buf = self.buf
        word: int = _U16.unpack_from(buf, at + Ipv6Header.FRAG_OFFSET_FLAGS)[0]
        ident: int = _U32.unpack_from(buf, at + Ipv6Header.FRAG_IDENT)[0]
        return Ipv6Fragment(
            header_offset=at,
            link_offset=link,
            next_header=buf[at + Ipv6Header.EXT_NEXT_HEADER],
            frag_offset=word & Ipv6Header.FRAG_OFFSET_MASK,
            more_frags=bool(word & Ipv6Header.FRAG_M),
            ident=ident,
            upper_protocol=upper_protocol,
            upper_offset=upper,
        )

    def __repr__(self) -> str:
        return (
            f"Ipv6Packet(src={IPv6Address(self.src)}, dst={IPv6Address(self.dst)}, "
            f"next_header={self.next_header}, len={len(self.buf)})"
        )


@dataclass(frozen=True, slots=True)
class Ipv6Repr:
    """A high-level IPv6 fixed header (extension headers belong to the payload)."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_len: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        check_uint("next_header", self.next_header, 8)
        check_uint("payload_len", self.payload_len, 16)
        check_uint("hop_limit", self.hop_limit, 8)
        check_uint("traffic_class", self.traffic_class, 8)
        check_uint("flow_label", self.flow_label, 20)

    @property
    def header_len(self) -> int:
        return Ipv6Header.HEADER_LEN

    @property
    def total_len(self) -> int:
        return Ipv6Header.HEADER_LEN + self.payload_len

    @classmethod
    def parse(cls, pkt: Ipv6Packet) -> Self:
        return cls(
            src=IPv6Address(pkt.src),
            dst=IPv6Address(pkt.dst),
            next_header=pkt.next_header,
            payload_len=pkt.payload_len,
            hop_limit=pkt.hop_limit,
            traffic_class=pkt.traffic_class,
            flow_label=pkt.flow_label,
        )

    def emit(self, buf: WritableBuffer) -> None:
        """Write the 40-byte fixed header at the start of ``buf``."""
        check_room("Ipv6Repr.emit", buf, Ipv6Header.HEADER_LEN)
        _HEADER.pack_into(
            buf,
            0,
            (Ipv6Header.VERSION << 28)
            | (self.traffic_class << Ipv6Header.TC_SHIFT)
            | self.flow_label,
            self.payload_len,
            self.next_header,
            self.hop_limit,
            self.src.packed,
            self.dst.packed,
        )
