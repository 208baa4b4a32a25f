"""Fields common to ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages.

Both share the first 8 bytes: type, code, checksum, a 32-bit "rest of header"
(identifier + sequence for echo, unused + MTU for "too big"), then data.  They differ
only in what the checksum covers, which the two subclasses add.
"""

from __future__ import annotations

import struct
from typing import Self

from ztun.wire._types import BytesLike
from ztun.wire.checksum import apply_delta, internet_checksum, ones_sum
from ztun.wire.errors import Truncated

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class _F:
    """Field offsets of an ICMP/ICMPv6 header."""

    TYPE = 0
    CODE = 1
    CHECKSUM = 2
    REST = 4
    IDENT = 4
    SEQ = 6
    DATA = 8
    HEADER_LEN = 8
    CHECKSUM_OK = 0xFFFF
    #: ~(+0): the checksum of a message whose bytes are all zero.
    ALL_ZERO_CHECKSUM = 0xFFFF


class IcmpView:
    """Base view: the shared 8-byte header and the data after it."""

    __slots__ = ("buf",)

    buf: memoryview

    #: Protocol name used in messages.
    _NAME = "ICMP"

    def __init__(self, buf: BytesLike) -> None:
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)

    @classmethod
    def checked(cls, buf: BytesLike) -> Self:
        """Refuse a message shorter than the 8-byte header (every type has one)."""
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        if len(mv) < _F.HEADER_LEN:
            raise Truncated("truncated", f"{cls._NAME} header needs 8 bytes, got {len(mv)}")
        view = object.__new__(cls)  # skips __init__'s isinstance: once per packet
        view.buf = mv
        return view

    @property
    def type(self) -> int:
        return self.buf[_F.TYPE]

    @type.setter
    def type(self, value: int) -> None:
        self.buf[_F.TYPE] = value

    @property
    def code(self) -> int:
        return self.buf[_F.CODE]

    @code.setter
    def code(self, value: int) -> None:
        self.buf[_F.CODE] = value

    @property
    def checksum(self) -> int:
        value: int = _U16.unpack_from(self.buf, _F.CHECKSUM)[0]
        return value

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buf, _F.CHECKSUM, value)

    @property
    def ident(self) -> int:
        """Echo identifier (the NAT's "port" for ICMP echo)."""
        value: int = _U16.unpack_from(self.buf, _F.IDENT)[0]
        return value

    @ident.setter
    def ident(self, value: int) -> None:
        _U16.pack_into(self.buf, _F.IDENT, value)

    @property
    def seq(self) -> int:
        value: int = _U16.unpack_from(self.buf, _F.SEQ)[0]
        return value

    @seq.setter
    def seq(self, value: int) -> None:
        _U16.pack_into(self.buf, _F.SEQ, value)

    @property
    def rest_of_header(self) -> int:
        """The 32-bit word after the checksum, whatever the type makes of it."""
        value: int = _U32.unpack_from(self.buf, _F.REST)[0]
        return value

    @rest_of_header.setter
    def rest_of_header(self, value: int) -> None:
        _U32.pack_into(self.buf, _F.REST, value)

    @property
    def data(self) -> memoryview:
        """Everything after the 8-byte header (echo payload, or the quoted packet)."""
        return self.buf[_F.DATA :]

    def _checksum_ok(self, initial: int) -> bool:
        """Shared verify: ``initial`` is 0 (ICMPv4) or the IPv6 pseudo-header sum."""
        return ones_sum(self.buf, initial) == _F.CHECKSUM_OK

    def _fill_checksum(self, initial: int) -> None:
        _U16.pack_into(self.buf, _F.CHECKSUM, 0)
        _U16.pack_into(self.buf, _F.CHECKSUM, internet_checksum(self.buf, initial))

    def adjust_checksum(self, delta: int) -> None:
        """Apply a precomputed :func:`~ztun.wire.checksum_delta` (ident rewrite, type flip).

        An ICMPv4 message can become all zeros (echo reply, ident 0, seq 0, no data),
        where RFC 1624 eqn. 3 yields +0 but receivers expect 0xffff; checked only when
        the result is 0, so the common path stays two additions.
        """
        checksum = apply_delta(_U16.unpack_from(self.buf, _F.CHECKSUM)[0], delta)
        _U16.pack_into(self.buf, _F.CHECKSUM, checksum)
        if checksum == 0 and not int.from_bytes(self.buf, "big"):
            _U16.pack_into(self.buf, _F.CHECKSUM, _F.ALL_ZERO_CHECKSUM)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type}, code={self.code}, len={len(self.buf)})"
