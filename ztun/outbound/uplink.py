"""The UDP uplink fast path: an association's datagrams sent from the TUN pump thread.

Once a flow's association is open and its route decided, every further datagram to the
same destination needs nothing the event loop has: the pump thread sends it straight to
the association's socket, skipping the cross-thread hop, a `UdpDatagram` hand-over and
the loop's per-datagram routing. An `Uplink` holds its *own* descriptor (a dup of the
association's socket): the loop may close the association at any time, and a descriptor
number the pump still holds must never be reused under it. Whoever retires an uplink
closes it only once the pump can no longer be sending on it (see `TunPump.retire`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

from ..wire._types import BytesLike
from .target import Target

log = logging.getLogger(__name__)


class Uplink:
    """Sends (header + payload) datagrams on a connected UDP socket it owns.

    `header_for(target)` is the protocol's per-datagram prefix (the SOCKS5 UDP request
    header); callers compute it once per route and pass it to `send`. Only the pump
    thread calls `send`; counters are written by it alone.
    """

    __slots__ = ("_sock", "datagrams", "dropped", "header_for", "octets")

    def __init__(self, sock: socket.socket, header_for: Callable[[Target], bytes]) -> None:
        self._sock = sock
        self.header_for = header_for
        self.datagrams = 0
        self.octets = 0  # payload bytes sent, headers not counted
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<Uplink fd={self._sock.fileno()} sent={self.datagrams} dropped={self.dropped}>"

    def send(self, header: bytes, payloads: Sequence[BytesLike]) -> tuple[int, int]:
        """Send every payload behind `header`, in order; a failed send drops its datagram.

        Returns (datagrams sent, payload bytes sent).
        """
        sendmsg = self._sock.sendmsg
        sent = octets = 0
        for payload in payloads:
            try:
                sendmsg((header, payload))  # gather-write: no header + payload copy
            except OSError as exc:  # buffer full, EMSGSIZE, an ICMP error from the relay
                self.dropped += 1
                log.debug("%r: datagram dropped: %s", self, exc)
                continue
            sent += 1
            octets += len(payload)
        self.datagrams += sent
        self.octets += octets
        return sent, octets

    def close(self) -> None:
        self._sock.close()
