"""IPv4 header (RFC 791): a zero-copy view and a repr.

The view is what the per-packet path uses: it wraps the TUN read buffer, reads fields
with precompiled ``struct`` calls and rewrites addresses in place.  The repr is what
builders and tests reason about.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Self

from ztun.wire._types import BytesLike, WritableBuffer
from ztun.wire._util import check_room, check_uint
from ztun.wire.checksum import apply_delta, internet_checksum, ones_sum
from ztun.wire.errors import Malformed, Truncated

__all__ = ["Ipv4Header", "Ipv4Packet", "Ipv4Repr"]

_U16 = struct.Struct("!H")
# version/IHL, DSCP/ECN, total length, ident, flags/frag offset, TTL, protocol,
# checksum, src, dst: the fixed 20 bytes in one pack.
_HEADER = struct.Struct("!BBHHHBBH4s4s")


class Ipv4Header:
    """Field offsets and masks of the IPv4 header (RFC 791 sec. 3.1)."""

    VER_IHL = 0
    DSCP_ECN = 1
    TOTAL_LEN = 2
    IDENT = 4
    FLAGS_FRAG = 6
    TTL = 8
    PROTOCOL = 9
    CHECKSUM = 10
    SRC = slice(12, 16)
    DST = slice(16, 20)
    OPTIONS = 20

    MIN_HEADER_LEN = 20
    MAX_HEADER_LEN = 60
    MAX_TOTAL_LEN = 0xFFFF
    VERSION = 4
    #: Bits of the 16-bit flags/fragment-offset word.
    DF = 0x4000
    MF = 0x2000
    FRAG_MASK = 0x1FFF
    #: The fragment offset counts 8-byte units.
    FRAG_UNIT_SHIFT = 3
    #: IHL counts 32-bit words.
    IHL_SHIFT = 2
    IHL_MASK = 0x0F
    CHECKSUM_OK = 0xFFFF


class Ipv4Packet:
    """A view of an IPv4 packet over a buffer; no copies, fields read on access.

    ``Ipv4Packet(buf)`` trusts ``buf`` (use it for packets this process built);
    :meth:`checked` validates untrusted input once so no accessor can fail later.
    Holding a view keeps a buffer export on a ``bytearray``: it cannot be resized
    until the view is dropped.
    """

    __slots__ = ("buf",)

    buf: memoryview

    def __init__(self, buf: BytesLike) -> None:
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)

    @classmethod
    def checked(cls, buf: BytesLike) -> Self:
        """Validate ``buf`` and return a view cut to the IP total length.

        Bytes after the total length (link-layer padding) are excluded from ``.buf``.
        """
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(mv)
        if size < Ipv4Header.MIN_HEADER_LEN:
            raise Truncated("truncated", f"IPv4 header needs 20 bytes, got {size}")
        ver_ihl = mv[Ipv4Header.VER_IHL]
        if ver_ihl >> 4 != Ipv4Header.VERSION:
            raise Malformed("bad_version", f"IPv4 version field is {ver_ihl >> 4}")
        header_len = (ver_ihl & Ipv4Header.IHL_MASK) << Ipv4Header.IHL_SHIFT
        if header_len < Ipv4Header.MIN_HEADER_LEN:
            raise Malformed("bad_ihl", f"IPv4 header length {header_len} < 20")
        if header_len > size:
            raise Truncated("truncated", f"IPv4 header length {header_len} > buffer {size}")
        total_len: int = _U16.unpack_from(mv, Ipv4Header.TOTAL_LEN)[0]
        if total_len < header_len:
            raise Malformed(
                "bad_length", f"IPv4 total length {total_len} < header length {header_len}"
            )
        if total_len > size:
            raise Truncated("truncated", f"IPv4 total length {total_len} > buffer {size}")
        # object.__new__ skips __init__'s isinstance: this runs once per packet.
        view = object.__new__(cls)
        view.buf = mv if total_len == size else mv[:total_len]
        return view

    # -- fixed header -------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.buf[Ipv4Header.VER_IHL] >> 4

    @property
    def header_len(self) -> int:
        """Header length in bytes (IHL * 4)."""
        return (self.buf[Ipv4Header.VER_IHL] & Ipv4Header.IHL_MASK) << Ipv4Header.IHL_SHIFT

    @property
    def dscp_ecn(self) -> int:
        return self.buf[Ipv4Header.DSCP_ECN]

    @property
    def total_len(self) -> int:
        value: int = _U16.unpack_from(self.buf, Ipv4Header.TOTAL_LEN)[0]
        return value

    @property
    def ident(self) -> int:
        value: int = _U16.unpack_from(self.buf, Ipv4Header.IDENT)[0]
        return value

    @property
    def dont_frag(self) -> bool:
        return bool(_U16.unpack_from(self.buf, Ipv4Header.FLAGS_FRAG)[0] & Ipv4Header.DF)

    @property
    def more_frags(self) -> bool:
        return bool(_U16.unpack_from(self.buf, Ipv4Header.FLAGS_FRAG)[0] & Ipv4Header.MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (the field counts 8-byte units), as in smoltcp."""
        word: int = _U16.unpack_from(self.buf, Ipv4Header.FLAGS_FRAG)[0]
        return (word & Ipv4Header.FRAG_MASK) << Ipv4Header.FRAG_UNIT_SHIFT

    @property
    def is_fragment(self) -> bool:
        """True for any fragment (MF set or offset non-zero); the NAT cannot port-map these."""
        return bool(
            _U16.unpack_from(self.buf, Ipv4Header.FLAGS_FRAG)[0]
            & (Ipv4Header.MF | Ipv4Header.FRAG_MASK)
        )

    @property
    def ttl(self) -> int:
        return self.buf[Ipv4Header.TTL]

    @ttl.setter
    def ttl(self, value: int) -> None:
        self.buf[Ipv4Header.TTL] = value

    @property
    def protocol(self) -> int:
        return self.buf[Ipv4Header.PROTOCOL]

    @property
    def checksum(self) -> int:
        value: int = _U16.unpack_from(self.buf, Ipv4Header.CHECKSUM)[0]
        return value

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buf, Ipv4Header.CHECKSUM, value)

    @property
    def src(self) -> bytes:
        return self.buf[Ipv4Header.SRC].tobytes()

    @src.setter
    def src(self, value: bytes) -> None:
        self.buf[Ipv4Header.SRC] = value

    @property
    def dst(self) -> bytes:
        return self.buf[Ipv4Header.DST].tobytes()

    @dst.setter
    def dst(self, value: bytes) -> None:
        self.buf[Ipv4Header.DST] = value

    # -- variable parts -----------------------------------------------------------

    # Hot accessors compute offsets inline rather than through other properties:
    # a property call costs more than the arithmetic on CPython 3.11.

    @property
    def options(self) -> memoryview:
        buf = self.buf
        return buf[
            Ipv4Header.OPTIONS : (buf[Ipv4Header.VER_IHL] & Ipv4Header.IHL_MASK)
            << Ipv4Header.IHL_SHIFT
        ]

    @property
    def payload(self) -> memoryview:
        buf = self.buf
        header_len = (buf[Ipv4Header.VER_IHL] & Ipv4Header.IHL_MASK) << Ipv4Header.IHL_SHIFT
        return buf[header_len : _U16.unpack_from(buf, Ipv4Header.TOTAL_LEN)[0]]

    # -- checksum -----------------------------------------------------------------

    def verify_checksum(self) -> bool:
        """True if the header checksum is correct (never offloaded for IPv4 headers)."""
        buf = self.buf
        return (
            ones_sum(buf[: (buf[Ipv4Header.VER_IHL] & Ipv4Header.IHL_MASK) << Ipv4Header.IHL_SHIFT])
            == Ipv4Header.CHECKSUM_OK
        )

    def fill_checksum(self) -> None:
        """Recompute the header checksum in place."""
        buf = self.buf
        _U16.pack_into(buf, Ipv4Header.CHECKSUM, 0)
        header = buf[: (buf[Ipv4Header.VER_IHL] & Ipv4Header.IHL_MASK) << Ipv4Header.IHL_SHIFT]
        _U16.pack_into(buf, Ipv4Header.CHECKSUM, internet_checksum(header))

    def adjust_checksum(self, delta: int) -> None:
        """Apply a precomputed :func:`~ztun.wire.checksum_delta` (e.g. for a new address)."""
        _U16.pack_into(
            self.buf,
            Ipv4Header.CHECKSUM,
            apply_delta(_U16.unpack_from(self.buf, Ipv4Header.CHECKSUM)[0], delta),
        )

    def __repr__(self) -> str:
        return (
            f"Ipv4Packet(src={IPv4Address(self.src)}, dst={IPv4Address(self.dst)}, "
            f"protocol={self.protocol}, len={len(self.buf)})"
        )


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """A high-level IPv4 header.

    ``more_frags``/``frag_offset`` (bytes, multiple of 8) come after the contract's
    fields so that parsing a fragment does not lose what makes it one.
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    payload_len: int
    ttl: int = 64
    ident: int = 0
    dont_frag: bool = True
    dscp_ecn: int = 0
    options: bytes = b""
    more_frags: bool = False
    frag_offset: int = 0

    def __post_init__(self) -> None:
        if (
            len(self.options) % 4
            or len(self.options) > Ipv4Header.MAX_HEADER_LEN - Ipv4Header.MIN_HEADER_LEN
        ):
            raise ValueError(
                f"IPv4 options must be a multiple of 4, at most 40 bytes: got {len(self.options)}"
            )
        check_uint("protocol", self.protocol, 8)
        check_uint("ttl", self.ttl, 8)
        check_uint("ident", self.ident, 16)
        check_uint("dscp_ecn", self.dscp_ecn, 8)
        if self.frag_offset & 7 or not 0 <= self.frag_offset <= (
            Ipv4Header.FRAG_MASK << Ipv4Header.FRAG_UNIT_SHIFT
        ):
            raise ValueError(f"frag_offset={self.frag_offset} must be a multiple of 8 <= 65528")
        if not 0 <= self.payload_len <= Ipv4Header.MAX_TOTAL_LEN - self.header_len:
            raise ValueError(f"payload_len={self.payload_len} does not fit an IPv4 packet")

    @property
    def header_len(self) -> int:
        return Ipv4Header.MIN_HEADER_LEN + len(self.options)

    @property
    def total_len(self) -> int:
        return self.header_len + self.payload_len

    @classmethod
    def parse(cls, pkt: Ipv4Packet, *, verify_checksum: bool = True) -> Self:
        """Read a header from a (checked) view.

        The header checksum is verified by default: unlike TCP/UDP it is always
        complete, even with TUN checksum offload.
        """
        if verify_checksum and not pkt.verify_checksum():
            raise Malformed("bad_checksum", "IPv4 header checksum mismatch")
        return cls(
            src=IPv4Address(pkt.src),
            dst=IPv4Address(pkt.dst),
            protocol=pkt.protocol,
            payload_len=pkt.total_len - pkt.header_len,
            ttl=pkt.ttl,
            ident=pkt.ident,
            dont_frag=pkt.dont_frag,
            dscp_ecn=pkt.dscp_ecn,
            options=pkt.options.tobytes(),
            more_frags=pkt.more_frags,
            frag_offset=pkt.frag_offset,
        )

    def emit(self, buf: WritableBuffer) -> None:
        """Write the header, checksum filled, at the start of ``buf`` (payload untouched)."""
        header_len = self.header_len
        check_room("Ipv4Repr.emit", buf, header_len)
        flags_frag = (self.frag_offset >> Ipv4Header.FRAG_UNIT_SHIFT) | (
            (Ipv4Header.DF if self.dont_frag else 0) | (Ipv4Header.MF if self.more_frags else 0)
        )
        _HEADER.pack_into(
            buf,
            0,
            (Ipv4Header.VERSION << 4) | (header_len >> Ipv4Header.IHL_SHIFT),
            self.dscp_ecn,
            header_len + self.payload_len,
            self.ident,
            flags_frag,
            self.ttl,
            self.protocol,
            0,
            self.src.packed,
            self.dst.packed,
        )
        if self.options:
            buf[Ipv4Header.OPTIONS : header_len] = self.options
        _U16.pack_into(buf, Ipv4Header.CHECKSUM, internet_checksum(memoryview(buf)[:header_len]))
