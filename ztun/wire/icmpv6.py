"""ICMPv6 messages (RFC 4443): the view; builders live in :mod:`ztun.wire.build`."""

from __future__ import annotations

from typing import Final

from ztun.wire._icmpbase import IcmpView
from ztun.wire.checksum import pseudo_header_sum
from ztun.wire.proto import IPPROTO_ICMPV6

__all__ = [
    "DEST_UNREACHABLE",
    "ECHO_REPLY",
    "ECHO_REQUEST",
    "PACKET_TOO_BIG",
    "TIME_EXCEEDED",
    "Icmpv6Packet",
]

DEST_UNREACHABLE: Final = 1
PACKET_TOO_BIG: Final = 2
TIME_EXCEEDED: Final = 3
ECHO_REQUEST: Final = 128
ECHO_REPLY: Final = 129


class Icmpv6Packet(IcmpView):
    """A view of an ICMPv6 message; unlike ICMPv4 the checksum covers a pseudo header."""

    __slots__ = ()

    _NAME = "ICMPv6"

    def verify_checksum(self, src: bytes, dst: bytes) -> bool:
        return self._checksum_ok(pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(self.buf)))

    def fill_checksum(self, src: bytes, dst: bytes) -> None:
        self._fill_checksum(pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(self.buf)))
