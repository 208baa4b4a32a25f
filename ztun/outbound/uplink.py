"""The UDP uplink fast path: an association's datagrams sent by the TUN pump itself.

Once a flow's association is open and its route decided, every further datagram to the
same destination needs nothing else the event loop has: the pump sends it straight to
the association's socket, skipping a `UdpDatagram` hand-over (a cross-thread hop with
--tun-thread) and the per-datagram routing. An `Uplink` holds its *own* descriptor (a dup
of the association's socket): with the pump in its own thread, the loop may close the
association at any time, and a descriptor number the pump still holds must never be
reused under it. Whoever retires an uplink
closes it only once the pump can no longer be sending on it (see `TunPump.retire`).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from ..wire._types import BytesLike
from .target import Target

log = logging.getLogger(__name__)


#: setsockopt/cmsg UDP_SEGMENT (linux/udp.h): one sendmsg, the kernel cuts the datagrams.
UDP_SEGMENT = 103
#: Segments per GSO send: the kernel's UDP_MAX_SEGMENTS was 64 before Linux 6.9.
GSO_MAX_SEGMENTS = 64
#: Bytes per GSO send: an IPv4/IPv6 UDP datagram's payload tops out below 64 KiB.
GSO_MAX_BYTES = 65000
_GSO_SIZE = struct.Struct("=H")
#: A GSO send that fails with these is retried datagram by datagram.
#: EINVAL: a segment exceeds the path MTU; EIO: the route cannot offload checksums.
_GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})


def gso_runs(header_len: int, sizes: Sequence[int], max_segment: int) -> list[tuple[int, int]]:
    """Cut a batch into GSO sends: [(start, end)) index ranges, in order.

    A UDP GSO send carries segments of one size, except that the last may be shorter;
    a segment is the header plus a payload, at most `max_segment` bytes (0 turns GSO off).
    A range of one datagram is a plain send.
    """
    runs: list[tuple[int, int]] = []
    count = len(sizes)
    i = 0
    while i < count:
        size = sizes[i]
        segment = header_len + size
        j = i + 1
        if 0 < segment <= max_segment:
            limit = min(count, i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
            while j < limit and sizes[j] == size:
                j += 1
            if j < limit and header_len + sizes[j] > 0 and sizes[j] < size:
                j += 1  # a shorter datagram can close the run
        runs.append((i, j))
        i = j
    return runs


class Uplink:
    """Sends (header + payload) datagrams on a connected UDP socket it owns.

    `header_for(target)` is the protocol's per-datagram prefix (the SOCKS5 UDP request
    header); callers compute it once per route and pass it to `send`. Only the pump
    thread calls `send`; counters are written by it alone.

    Datagrams of equal size go out in one UDP GSO sendmsg (a scatter list of header,
    payload, header, payload...: nothing is copied). A GSO send the route refuses is
    resent one by one, and segments that large are not batched again.
    """

    __slots__ = (
        "_owns_socket",
        "_sock",
        "datagrams",
        "dropped",
        "gso_sends",
        "header_for",
        "max_segment",
        "octets",
    )

    def __init__(
        self,
        sock: socket.socket,
        header_for: Callable[[Target], bytes],
        *,
        gso: bool = True,
        owns_socket: bool = True,
    ) -> None:
        """`owns_socket`: close `sock` on `close` (a dup made for a pump thread); else the
        association it belongs to closes it (a pump on the loop's own thread)."""
        self._sock = sock
        self._owns_socket = owns_socket
        self.header_for = header_for
        self.datagrams = 0
        self.octets = 0  # payload bytes sent, headers not counted
        self.dropped = 0
        self.gso_sends = 0
        # Largest segment a GSO send may carry; lowered when the route refuses one.
        self.max_segment = GSO_MAX_BYTES if gso else 0

    def __repr__(self) -> str:
        return f"<Uplink fd={self._sock.fileno()} sent={self.datagrams} dropped={self.dropped}>"

    def send(self, header: bytes, payloads: Sequence[BytesLike]) -> tuple[int, int]:
        """Send every payload behind `header`, in order; a failed send drops its datagrams.

        Returns (datagrams sent, payload bytes sent).
        """
        sendmsg = self._sock.sendmsg
        sent = octets = 0
        if len(payloads) == 1 or not self.max_segment:
            runs = [(i, i + 1) for i in range(len(payloads))]
        else:
            runs = gso_runs(len(header), [len(p) for p in payloads], self.max_segment)
        for start, end in runs:
            if end - start > 1:
                ok = self._send_gso(header, payloads[start:end])
                if ok is None:  # refused: one by one, as below
                    runs_left = [(k, k + 1) for k in range(start, end)]
                else:
                    if ok:
                        sent += end - start
                        octets += sum(len(p) for p in payloads[start:end])
                    continue
            else:
                runs_left = [(start, end)]
            for k, _ in runs_left:
                payload = payloads[k]
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

    def _send_gso(self, header: bytes, payloads: Sequence[BytesLike]) -> bool | None:
        """One GSO send; False: dropped (all of it), None: refused, send them one by one."""
        segment = len(header) + len(payloads[0])
        buffers: list[BytesLike] = []
        for payload in payloads:
            buffers.append(header)
            buffers.append(payload)
        try:
            self._sock.sendmsg(buffers, [(socket.SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(segment))])
        except OSError as exc:
            if exc.errno in _GSO_REFUSED:
                # Too big for the path MTU, or no offload at all: never batch this size (or,
                # without offload, any size) again.
                self.max_segment = 0 if exc.errno != errno.EINVAL else segment - 1
                log.debug(
                    "%r: GSO send refused (%s); max segment now %d", self, exc, self.max_segment
                )
                return None
            self.dropped += len(payloads)
            log.debug("%r: %d datagrams dropped: %s", self, len(payloads), exc)
            return False
        self.gso_sends += 1
        return True

    def close(self) -> None:
        if self._owns_socket:
            self._sock.close()
