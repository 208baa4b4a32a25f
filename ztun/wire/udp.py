"""UDP header (RFC 768; IPv6 rules from RFC 8200 sec. 8.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from ztun.wire._types import BytesLike, WritableBuffer
from ztun.wire._util import check_room, check_uint
from ztun.wire.checksum import apply_delta, internet_checksum, ones_sum, pseudo_header_sum
from ztun.wire.errors import Malformed, Truncated
from ztun.wire.proto import IPPROTO_UDP

__all__ = ["UdpHeader", "UdpPacket", "UdpRepr"]

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHHH")


class UdpHeader:
    """Field offsets of the UDP header."""

    SRC_PORT = 0
    DST_PORT = 2
    LENGTH = 4
    CHECKSUM = 6
    HEADER_LEN = 8
    MAX_LEN = 0xFFFF
    #: A computed checksum of 0 is sent as all ones: 0 on the wire means "no checksum".
    NO_CHECKSUM = 0
    ZERO_AS = 0xFFFF
    CHECKSUM_OK = 0xFFFF
    IPV4_ADDR_LEN = 4


class UdpPacket:
    """A view of a UDP datagram (header + payload) over a buffer."""

    __slots__ = ("buf",)

    buf: memoryview

    def __init__(self, buf: BytesLike) -> None:
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)

    @classmethod
    def checked(cls, buf: BytesLike) -> Self:
        """Validate the length field; cut ``.buf`` to it (the IP payload may be longer)."""
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(mv)
        if size < UdpHeader.HEADER_LEN:
            raise Truncated("truncated", f"UDP header needs 8 bytes, got {size}")
        length: int = _U16.unpack_from(mv, UdpHeader.LENGTH)[0]
        if length < UdpHeader.HEADER_LEN:
            raise Malformed("bad_length", f"UDP length field {length} < 8")
        if length > size:
            raise Truncated("truncated", f"UDP length {length} > datagram {size}")
        view = object.__new__(cls)  # skips __init__'s isinstance: once per packet
        view.buf = mv if length == size else mv[:length]
        return view

    @property
    def src_port(self) -> int:
        value: int = _U16.unpack_from(self.buf, UdpHeader.SRC_PORT)[0]
        return value

    @src_port.setter
    def src_port(self, value: int) -> None:
        _U16.pack_into(self.buf, UdpHeader.SRC_PORT, value)

    @property
    def dst_port(self) -> int:
        value: int = _U16.unpack_from(self.buf, UdpHeader.DST_PORT)[0]
        return value

    @dst_port.setter
    def dst_port(self, value: int) -> None:
        _U16.pack_into(self.buf, UdpHeader.DST_PORT, value)

    @property
    def length(self) -> int:
        value: int = _U16.unpack_from(self.buf, UdpHeader.LENGTH)[0]
        return value

    @property
    def checksum(self) -> int:
        """Raw checksum field; 0 means "not computed" (IPv4 only)."""
        value: int = _U16.unpack_from(self.buf, UdpHeader.CHECKSUM)[0]
        return value

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buf, UdpHeader.CHECKSUM, value)

    @property
    def payload(self) -> memoryview:
        buf = self.buf
        return buf[UdpHeader.HEADER_LEN : _U16.unpack_from(buf, UdpHeader.LENGTH)[0]]

    def verify_checksum(self, src: bytes, dst: bytes) -> bool:
        """True if the checksum is correct, or absent (0) over IPv4.

        RFC 8200 sec. 8.1: over IPv6 a zero checksum is invalid and the datagram must
        be dropped, so it verifies False.
        """
        checksum = _U16.unpack_from(self.buf, UdpHeader.CHECKSUM)[0]
        if checksum == UdpHeader.NO_CHECKSUM:
            return len(src) == UdpHeader.IPV4_ADDR_LEN
        initial = pseudo_header_sum(src, dst, IPPROTO_UDP, len(self.buf))
        return ones_sum(self.buf, initial) == UdpHeader.CHECKSUM_OK

    def fill_checksum(self, src: bytes, dst: bytes) -> None:
        """Compute the checksum in place; a result of 0 is stored as 0xffff (RFC 768)."""
        self.checksum = 0
        initial = pseudo_header_sum(src, dst, IPPROTO_UDP, len(self.buf))
        self.checksum = internet_checksum(self.buf, initial) or UdpHeader.ZERO_AS

    def adjust_checksum(self, delta: int) -> None:
        """Apply a precomputed :func:`~ztun.wire.checksum_delta`, keeping UDP's 0 rules.

        An absent checksum (0, IPv4) stays absent -- there is nothing to fix and
        "filling" it would invent one; a result of 0 is stored as 0xffff (RFC 768).
        """
        checksum = _U16.unpack_from(self.buf, UdpHeader.CHECKSUM)[0]
        if checksum != UdpHeader.NO_CHECKSUM:
            _U16.pack_into(
                self.buf, UdpHeader.CHECKSUM, apply_delta(checksum, delta) or UdpHeader.ZERO_AS
            )

    def __repr__(self) -> str:
        return f"UdpPacket(src_port={self.src_port}, dst_port={self.dst_port}, len={len(self.buf)})"


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A high-level UDP header."""

    src_port: int
    dst_port: int
    payload_len: int

    def __post_init__(self) -> None:
        check_uint("src_port", self.src_port, 16)
        check_uint("dst_port", self.dst_port, 16)
        if not 0 <= self.payload_len <= UdpHeader.MAX_LEN - UdpHeader.HEADER_LEN:
            raise ValueError(f"payload_len={self.payload_len} does not fit a UDP datagram")

    @property
    def header_len(self) -> int:
        return UdpHeader.HEADER_LEN

    @classmethod
    def parse(cls, pkt: UdpPacket, src: bytes | None = None, dst: bytes | None = None) -> Self:
        """Read a header from a checked view; pass ``src``/``dst`` to verify the checksum."""
        if src is not None and dst is not None and not pkt.verify_checksum(src, dst):
            raise Malformed("bad_checksum", "UDP checksum mismatch")
        return cls(pkt.src_port, pkt.dst_port, pkt.length - UdpHeader.HEADER_LEN)

    def emit(self, buf: WritableBuffer, src: bytes, dst: bytes, payload: BytesLike) -> None:
        """Write header, ``payload`` and checksum at the start of ``buf``."""
        if len(payload) != self.payload_len:
            raise ValueError(f"payload is {len(payload)} bytes, repr says {self.payload_len}")
        length = UdpHeader.HEADER_LEN + self.payload_len
        check_room("UdpRepr.emit", buf, length)
        _HEADER.pack_into(buf, 0, self.src_port, self.dst_port, length, 0)
        buf[UdpHeader.HEADER_LEN : length] = payload
        initial = pseudo_header_sum(src, dst, IPPROTO_UDP, length)
        checksum = internet_checksum(memoryview(buf)[:length], initial) or UdpHeader.ZERO_AS
        _U16.pack_into(buf, UdpHeader.CHECKSUM, checksum)
