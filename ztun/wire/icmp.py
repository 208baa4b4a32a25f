"""ICMPv4 messages (RFC 792): the view; builders live in :mod:`ztun.wire.build`."""

from __future__ import annotations

from typing import Final

from ztun.wire._icmpbase import IcmpView

__all__ = [
    "DEST_UNREACHABLE",
    "ECHO_REPLY",
    "ECHO_REQUEST",
    "TIME_EXCEEDED",
    "IcmpPacket",
]

ECHO_REPLY: Final = 0
DEST_UNREACHABLE: Final = 3
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11


class IcmpPacket(IcmpView):
    """A view of an ICMPv4 message; the checksum covers the message only."""

    __slots__ = ()

    _NAME = "ICMP"

    def verify_checksum(self) -> bool:
        return self._checksum_ok(0)

    def fill_checksum(self) -> None:
        self._fill_checksum(0)
