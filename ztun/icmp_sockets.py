"""What an unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP / IPPROTO_ICMPV6) writes
and reads on each OS, as bytes: the sans-IO half of `--icmp direct` (ztun.icmp_direct
does the I/O).

Linux (``net/ipv4/ping.c``): the kernel gives each socket an identifier of its own,
writes it and the checksum into every request, and hands the socket only the echo
replies that carry it, without the IP header. What ztun writes: type, code 0, checksum
0, identifier 0, sequence, data.

macOS (XNU ``bsd/netinet/ip_icmp.c`` ``icmp_dgram_send``, ``bsd/netinet6/icmp6.c``
``icmp6_dgram_send``): these sockets are raw sockets without the privilege check. The
request goes out as written -- identifier included, and for IPv4 the checksum too
(``rip_output`` computes none; ``rip6_output`` computes ICMPv6's, as for every
IPPROTO_ICMPV6 raw socket) -- and *every* ICMP message the host receives is handed to
*every* such socket (``rip_input`` matches on the protocol alone), IPv4 ones with their
IP header in front (``IP_STRIPHDR`` is off). So ztun gives each session an identifier
no other session of its holds, writes it, strips the IPv4 header, and keeps only the
echo replies that carry that identifier.

Windows has no ICMP datagram sockets for unprivileged processes (its way is
``IcmpSendEcho2`` in iphlpapi): `--icmp direct` is refused there (ztun.cli).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Protocol

from .wire.checksum import internet_checksum

__all__ = ["DarwinEchoCodec", "EchoCodec", "LinuxEchoCodec", "codec_for"]

ECHO_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
ECHO_REQUEST = {4: 8, 6: 128}  # RFC 792, RFC 4443 sec. 4.1
ECHO_REPLY = {4: 0, 6: 129}
_IPV4_MIN_HEADER = 20
_IDENTS = 1 << 16


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An echo reply read from a session's socket: its sequence number and data."""

    seq: int
    payload: bytes


class EchoCodec(Protocol):
    """One OS's ICMP datagram sockets, as bytes."""

    def open(self, version: int) -> int:
        """The identifier a new session writes in its requests."""

    def close(self, ident: int) -> None:
        """The session that held `ident` is gone."""

    def request(self, version: int, ident: int, seq: int, payload: bytes) -> bytes:
        """The 8-byte echo header to write before `payload` (in the same datagram)."""

    def reply(self, version: int, ident: int, message: bytes) -> EchoReply | None:
        """What `message` (one read of the session's socket) answers, or None when it is
        not an echo reply of this session."""


class LinuxEchoCodec:
    """The kernel owns identifiers and checksums, and filters the replies."""

    def open(self, version: int) -> int:
        return 0  # the kernel writes the socket's own

    def close(self, ident: int) -> None:
        pass

    def request(self, version: int, ident: int, seq: int, payload: bytes) -> bytes:
        return ECHO_HEADER.pack(ECHO_REQUEST[version], 0, 0, 0, seq)

    def reply(self, version: int, ident: int, message: bytes) -> EchoReply | None:
        if len(message) < ECHO_HEADER.size or message[0] != ECHO_REPLY[version]:
            return None  # the kernel filters, but an ICMP error may reach the socket too
        return EchoReply(ECHO_HEADER.unpack_from(message)[4], message[ECHO_HEADER.size :])


class DarwinEchoCodec:
    """ztun owns the identifiers and the IPv4 checksum, and filters the replies."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._next = self._rng.randrange(_IDENTS)  # other programs' pings pick theirs too
        self._held: set[int] = set()

    def open(self, version: int) -> int:
        if len(self._held) >= _IDENTS:
            raise OSError("every ICMP identifier is held by a session")
        while self._next in self._held:
            self._next = (self._next + 1) % _IDENTS
        ident = self._next
        self._held.add(ident)
        self._next = (ident + 1) % _IDENTS
        return ident

    def close(self, ident: int) -> None:
        self._held.discard(ident)

    def request(self, version: int, ident: int, seq: int, payload: bytes) -> bytes:
        header = ECHO_HEADER.pack(ECHO_REQUEST[version], 0, 0, ident, seq)
        if version == 6:
            return header  # rip6_output sums every IPPROTO_ICMPV6 raw socket's messages
        # RFC 792: the checksum covers the whole message; rip_output sends what it gets.
        total = internet_checksum(header + payload)
        return header[:2] + total.to_bytes(2, "big") + header[4:]

    def reply(self, version: int, ident: int, message: bytes) -> EchoReply | None:
        if version == 4:
            # The IPv4 header first (raw-socket delivery): its length from the IHL.
            if len(message) < _IPV4_MIN_HEADER or message[0] >> 4 != 4:
                return None
            message = message[(message[0] & 0x0F) * 4 :]
        if len(message) < ECHO_HEADER.size or message[0] != ECHO_REPLY[version]:
            return None  # every ICMP message reaches every socket: requests, errors...
        _type, code, _sum, their_ident, seq = ECHO_HEADER.unpack_from(message)
        if code != 0 or their_ident != ident:
            return None  # another session's (or another program's) reply
        return EchoReply(seq, message[ECHO_HEADER.size :])


def codec_for(platform: str) -> EchoCodec:
    """The codec of `sys.platform` (Linux's for any other)."""
    return DarwinEchoCodec() if platform == "darwin" else LinuxEchoCodec()
