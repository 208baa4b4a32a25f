"""TCP header (RFC 9293) and options (RFC 9293, 2018 SACK, 7323 window scale/timestamps).

The stack never reimplements TCP -- the kernel terminates it -- so the per-packet path
only needs ports, flags and the checksum; options are parsed for SYNs (MSS clamping,
logging) and emitted by builders (RSTs, tests).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Self

from ztun.wire._types import BytesLike, WritableBuffer
from ztun.wire._util import check_room, check_uint
from ztun.wire.checksum import apply_delta, internet_checksum, ones_sum, pseudo_header_sum
from ztun.wire.errors import Malformed, Truncated
from ztun.wire.proto import IPPROTO_TCP

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "TcpHeader",
    "TcpOptions",
    "TcpPacket",
    "TcpRepr",
    "emit_options",
    "parse_options",
]

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# ports, seq, ack, data offset, flags, window, checksum, urgent pointer.
_HEADER = struct.Struct("!HHIIBBHHH")
_MSS = struct.Struct("!BBH")
_WSCALE = struct.Struct("!BBBB")
_TIMESTAMPS = struct.Struct("!BBBBII")
#: A SACK block (left, right edge) and the timestamps option body (TSval, TSecr).
_TWO_U32 = struct.Struct("!II")


class TcpHeader:
    """Field offsets of the TCP header (RFC 9293 sec. 3.1)."""

    SRC_PORT = 0
    DST_PORT = 2
    SEQ = 4
    ACK = 8
    DATA_OFF = 12
    FLAGS = 13
    WINDOW = 14
    CHECKSUM = 16
    URGENT = 18
    OPTIONS = 20

    MIN_HEADER_LEN = 20
    MAX_HEADER_LEN = 60
    MAX_OPTIONS_LEN = 40
    #: Data offset: high nibble of byte 12, in 32-bit words.
    DATA_OFF_SHIFT = 4
    WORD_SHIFT = 2
    CHECKSUM_OK = 0xFFFF


class _Opt:
    """Option kinds and their fixed lengths (IANA "TCP Option Kind Numbers")."""

    EOL = 0
    NOP = 1
    MSS = 2
    MSS_LEN = 4
    WSCALE = 3
    WSCALE_LEN = 3
    SACK_PERM = 4
    SACK_PERM_LEN = 2
    SACK = 5
    SACK_BLOCK_LEN = 8
    MAX_SACK_BLOCKS = 4
    TIMESTAMPS = 8
    TIMESTAMPS_LEN = 10
    #: kind + length bytes that precede every option but EOL and NOP.
    TL_LEN = 2
    ALIGN = 4


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """The TCP options ztun understands; unknown ones are skipped when parsing."""

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mss is not None:
            check_uint("mss", self.mss, 16)
        if self.window_scale is not None:
            check_uint("window_scale", self.window_scale, 8)
        if len(self.sack_blocks) > _Opt.MAX_SACK_BLOCKS:
            raise ValueError(f"at most 4 SACK blocks, got {len(self.sack_blocks)}")
        for left, right in self.sack_blocks:
            check_uint("sack left edge", left, 32)
            check_uint("sack right edge", right, 32)
        if self.timestamps is not None:
            check_uint("tsval", self.timestamps[0], 32)
            check_uint("tsecr", self.timestamps[1], 32)


_NO_OPTIONS = TcpOptions()


def parse_options(data: BytesLike) -> TcpOptions:
    """Parse an options area; raises ``Malformed("bad_option")`` on an impossible length.

    Parsing stops at EOL; NOPs and unknown kinds are skipped; a repeated option
    overrides the earlier one.
    """
    if not data:
        return _NO_OPTIONS
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamps: tuple[int, int] | None = None
    end = len(data)
    pos = 0
    # Every iteration advances pos by >= 1, so the loop runs at most len(data) (<= 40) times.
    while pos < end:
        kind = data[pos]
        if kind == _Opt.EOL:
            break
        if kind == _Opt.NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            raise Malformed("bad_option", f"option kind {kind} at {pos} has no length byte")
        length = data[pos + 1]
        if length < _Opt.TL_LEN or pos + length > end:
            raise Malformed("bad_option", f"option kind {kind} at {pos} has length {length}")
        if kind == _Opt.MSS:
            if length != _Opt.MSS_LEN:
                raise Malformed("bad_option", f"MSS option length {length}")
            mss = _MSS.unpack_from(data, pos)[2]
        elif kind == _Opt.WSCALE:
            if length != _Opt.WSCALE_LEN:
                raise Malformed("bad_option", f"window scale option length {length}")
            window_scale = data[pos + 2]
        elif kind == _Opt.SACK_PERM:
            if length != _Opt.SACK_PERM_LEN:
                raise Malformed("bad_option", f"SACK-permitted option length {length}")
            sack_permitted = True
        elif kind == _Opt.SACK:
            count, rem = divmod(length - _Opt.TL_LEN, _Opt.SACK_BLOCK_LEN)
            if rem or not 1 <= count <= _Opt.MAX_SACK_BLOCKS:
                raise Malformed("bad_option", f"SACK option length {length}")
            sack_blocks = tuple(
                _TWO_U32.unpack_from(data, pos + _Opt.TL_LEN + i * _Opt.SACK_BLOCK_LEN)
                for i in range(count)
            )
        elif kind == _Opt.TIMESTAMPS:
            if length != _Opt.TIMESTAMPS_LEN:
                raise Malformed("bad_option", f"timestamps option length {length}")
            tsval, tsecr = _TWO_U32.unpack_from(data, pos + _Opt.TL_LEN)
            timestamps = (tsval, tsecr)
        pos += length
    return TcpOptions(mss, window_scale, sack_permitted, sack_blocks, timestamps)


def emit_options(opts: TcpOptions) -> bytes:
    """Encode options, NOP-padded to a multiple of 4, in Linux's layout.

    Linux (``tcp_options_write``) orders them MSS, SACK-permitted+timestamps (sharing
    one word), window scale, SACK blocks; copying that makes our packets byte-identical
    to the kernel's, which keeps golden pcaps and captured vectors comparable.
    """
    out = bytearray()
    if opts.mss is not None:
        out += _MSS.pack(_Opt.MSS, _Opt.MSS_LEN, opts.mss)
    if opts.timestamps is not None:
        # Linux fills the word before the timestamps with SACK-permitted when both go out.
        first, second = (
            (_Opt.SACK_PERM, _Opt.SACK_PERM_LEN) if opts.sack_permitted else (_Opt.NOP, _Opt.NOP)
        )
        tsval, tsecr = opts.timestamps
        out += _TIMESTAMPS.pack(first, second, _Opt.TIMESTAMPS, _Opt.TIMESTAMPS_LEN, tsval, tsecr)
    elif opts.sack_permitted:
        out += bytes((_Opt.NOP, _Opt.NOP, _Opt.SACK_PERM, _Opt.SACK_PERM_LEN))
    if opts.window_scale is not None:
        out += _WSCALE.pack(_Opt.NOP, _Opt.WSCALE, _Opt.WSCALE_LEN, opts.window_scale)
    if opts.sack_blocks:
        length = _Opt.TL_LEN + _Opt.SACK_BLOCK_LEN * len(opts.sack_blocks)
        out += bytes((_Opt.NOP, _Opt.NOP, _Opt.SACK, length))
        for block in opts.sack_blocks:
            out += _TWO_U32.pack(*block)
    if len(out) > TcpHeader.MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options need {len(out)} bytes, at most 40 fit")
    # Every piece above is already 4-byte aligned; this is a guard for future options.
    out += bytes(-len(out) % _Opt.ALIGN)
    return bytes(out)


class TcpPacket:
    """A view of a TCP segment (header + payload) over a buffer.

    Checksum methods take the raw IP addresses (4 or 16 bytes) because the checksum
    covers a pseudo header the segment does not contain.
    """

    __slots__ = ("buf",)

    buf: memoryview

    def __init__(self, buf: BytesLike) -> None:
        self.buf = buf if isinstance(buf, memoryview) else memoryview(buf)

    @classmethod
    def checked(cls, buf: BytesLike) -> Self:
        """Validate the header length against the data offset and the buffer."""
        mv = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(mv)
        if size < TcpHeader.MIN_HEADER_LEN:
            raise Truncated("truncated", f"TCP header needs 20 bytes, got {size}")
        header_len = (mv[TcpHeader.DATA_OFF] >> TcpHeader.DATA_OFF_SHIFT) << TcpHeader.WORD_SHIFT
        if header_len < TcpHeader.MIN_HEADER_LEN:
            raise Malformed("bad_data_offset", f"TCP data offset gives {header_len} bytes")
        if header_len > size:
            raise Truncated("truncated", f"TCP header length {header_len} > segment {size}")
        view = object.__new__(cls)  # skips __init__'s isinstance: once per packet
        view.buf = mv
        return view

    @property
    def src_port(self) -> int:
        value: int = _U16.unpack_from(self.buf, TcpHeader.SRC_PORT)[0]
        return value

    @src_port.setter
    def src_port(self, value: int) -> None:
        _U16.pack_into(self.buf, TcpHeader.SRC_PORT, value)

    @property
    def dst_port(self) -> int:
        value: int = _U16.unpack_from(self.buf, TcpHeader.DST_PORT)[0]
        return value

    @dst_port.setter
    def dst_port(self, value: int) -> None:
        _U16.pack_into(self.buf, TcpHeader.DST_PORT, value)

    @property
    def seq(self) -> int:
        value: int = _U32.unpack_from(self.buf, TcpHeader.SEQ)[0]
        return value

    @property
    def ack(self) -> int:
        """Acknowledgment number (see :attr:`ack_flag` for the ACK bit)."""
        value: int = _U32.unpack_from(self.buf, TcpHeader.ACK)[0]
        return value

    @property
    def header_len(self) -> int:
        return (self.buf[TcpHeader.DATA_OFF] >> TcpHeader.DATA_OFF_SHIFT) << TcpHeader.WORD_SHIFT

    @property
    def flags(self) -> int:
        """The eight flag bits CWR..FIN (the experimental NS bit is ignored)."""
        return self.buf[TcpHeader.FLAGS]

    @property
    def fin(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & FIN)

    @property
    def syn(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & SYN)

    @property
    def rst(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & RST)

    @property
    def psh(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & PSH)

    @property
    def ack_flag(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & ACK)

    @property
    def urg(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & URG)

    @property
    def ece(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & ECE)

    @property
    def cwr(self) -> bool:
        return bool(self.buf[TcpHeader.FLAGS] & CWR)

    @property
    def window(self) -> int:
        value: int = _U16.unpack_from(self.buf, TcpHeader.WINDOW)[0]
        return value

    @property
    def checksum(self) -> int:
        value: int = _U16.unpack_from(self.buf, TcpHeader.CHECKSUM)[0]
        return value

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buf, TcpHeader.CHECKSUM, value)

    @property
    def urgent(self) -> int:
        value: int = _U16.unpack_from(self.buf, TcpHeader.URGENT)[0]
        return value

    @property
    def options(self) -> memoryview:
        buf = self.buf
        return buf[
            TcpHeader.OPTIONS : (buf[TcpHeader.DATA_OFF] >> TcpHeader.DATA_OFF_SHIFT)
            << TcpHeader.WORD_SHIFT
        ]

    @property
    def payload(self) -> memoryview:
        buf = self.buf
        return buf[(buf[TcpHeader.DATA_OFF] >> TcpHeader.DATA_OFF_SHIFT) << TcpHeader.WORD_SHIFT :]

    def verify_checksum(self, src: bytes, dst: bytes) -> bool:
        """True if the checksum over pseudo header + segment is correct.

        With TUN checksum offload the kernel may hand over a partial checksum; the
        caller decides (from the virtio header) whether to verify at all.
        """
        initial = pseudo_header_sum(src, dst, IPPROTO_TCP, len(self.buf))
        return ones_sum(self.buf, initial) == TcpHeader.CHECKSUM_OK

    def fill_checksum(self, src: bytes, dst: bytes) -> None:
        """Recompute the checksum in place over pseudo header + the whole segment."""
        self.checksum = 0
        initial = pseudo_header_sum(src, dst, IPPROTO_TCP, len(self.buf))
        self.checksum = internet_checksum(self.buf, initial)

    def adjust_checksum(self, delta: int) -> None:
        """Apply a precomputed :func:`~ztun.wire.checksum_delta` (NAT of address + port)."""
        _U16.pack_into(
            self.buf,
            TcpHeader.CHECKSUM,
            apply_delta(_U16.unpack_from(self.buf, TcpHeader.CHECKSUM)[0], delta),
        )

    def __repr__(self) -> str:
        return (
            f"TcpPacket(src_port={self.src_port}, dst_port={self.dst_port}, seq={self.seq}, "
            f"flags=0x{self.flags:02x}, len={len(self.buf)})"
        )


@dataclass(frozen=True, slots=True)
class TcpRepr:
    """A high-level TCP header; ``payload_len`` is last (defaulted) to keep field order."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    options: TcpOptions = field(default=_NO_OPTIONS)
    payload_len: int = 0

    def __post_init__(self) -> None:
        check_uint("src_port", self.src_port, 16)
        check_uint("dst_port", self.dst_port, 16)
        check_uint("seq", self.seq, 32)
        check_uint("ack", self.ack, 32)
        check_uint("flags", self.flags, 8)
        check_uint("window", self.window, 16)
        check_uint("urgent", self.urgent, 16)
        if self.payload_len < 0:
            raise ValueError(f"payload_len={self.payload_len} < 0")

    @property
    def header_len(self) -> int:
        return TcpHeader.MIN_HEADER_LEN + len(emit_options(self.options))

    @classmethod
    def parse(cls, pkt: TcpPacket, src: bytes | None = None, dst: bytes | None = None) -> Self:
        """Read a header from a checked view; pass ``src``/``dst`` to verify the checksum."""
        if src is not None and dst is not None and not pkt.verify_checksum(src, dst):
            raise Malformed("bad_checksum", "TCP checksum mismatch")
        return cls(
            src_port=pkt.src_port,
            dst_port=pkt.dst_port,
            seq=pkt.seq,
            ack=pkt.ack,
            flags=pkt.flags,
            window=pkt.window,
            urgent=pkt.urgent,
            options=parse_options(pkt.options),
            payload_len=len(pkt.buf) - pkt.header_len,
        )

    def emit(self, buf: WritableBuffer, src: bytes, dst: bytes, payload: BytesLike) -> None:
        """Write header, ``payload`` and checksum at the start of ``buf``.

        ``src``/``dst`` are the raw IP addresses for the pseudo header.
        """
        if len(payload) != self.payload_len:
            raise ValueError(f"payload is {len(payload)} bytes, repr says {self.payload_len}")
        options = emit_options(self.options)
        header_len = TcpHeader.MIN_HEADER_LEN + len(options)
        seg_len = header_len + self.payload_len
        check_room("TcpRepr.emit", buf, seg_len)
        _HEADER.pack_into(
            buf,
            0,
            self.src_port,
            self.dst_port,
            self.seq,
            self.ack,
            (header_len >> TcpHeader.WORD_SHIFT) << TcpHeader.DATA_OFF_SHIFT,
            self.flags,
            self.window,
            0,
            self.urgent,
        )
        buf[TcpHeader.OPTIONS : header_len] = options
        buf[header_len:seg_len] = payload
        initial = pseudo_header_sum(src, dst, IPPROTO_TCP, seg_len)
        checksum = internet_checksum(memoryview(buf)[:seg_len], initial)
        _U16.pack_into(buf, TcpHeader.CHECKSUM, checksum)
