"""macOS's ICMP datagram sockets as bytes, for the `--icmp direct` tests.

MOCK NOTICE: no XNU kernel here. These write what a macOS ICMP datagram socket reads as
XNU delivers it (``bsd/netinet/raw_ip.c`` ``rip_input``: the IPv4 header in front, with
``ip_len`` already in host order and less the header, as ``ip_input`` leaves it; every
ICMP message to every such socket), field by field with the offsets of ``struct ip``
(``bsd/netinet/ip.h``) and ``struct icmp`` (``bsd/netinet/ip_icmp.h``), and check what
ztun writes as ``icmp_dgram_send`` (``bsd/netinet/ip_icmp.c``) sends it: as written,
identifier and checksum included. The checksum is computed here independently (RFC 1071
written out). Each socket's descriptor is a real socketpair end, so the event loop
watches it as it would a real socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque


def rfc1071(data: bytes) -> int:
    """The Internet checksum, written out (not ztun's)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def xnu_ipv4_delivery(icmp: bytes, *, src: str = "192.0.2.9", ihl: int = 5) -> bytes:
    """struct ip as rip_input hands it to a raw (and so an ICMP datagram) socket."""
    options = bytes(4 * (ihl - 5))
    header = (
        bytes([0x40 | ihl, 0])  # ip_v/ip_hl @0, ip_tos @1
        + len(icmp).to_bytes(2, "little")  # ip_len @2: host order, less the header
        + b"\x12\x34" + b"\x00\x00"  # ip_id @4, ip_off @6
        + bytes([64, 1]) + b"\xbe\xef"  # ip_ttl @8, ip_p @9 = ICMP, ip_sum @10
        + bytes(int(x) for x in src.split(".")) + bytes([10, 0, 0, 2])  # ip_src @12, ip_dst @16
    )  # fmt: skip
    return header + options + icmp


def echo(kind: int, ident: int, seq: int, data: bytes, code: int = 0) -> bytes:
    """struct icmp: icmp_type @0, icmp_code @1, icmp_cksum @2, icmp_id @4, icmp_seq @6."""
    head = bytes([kind, code]) + b"\0\0" + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
    total = rfc1071(head + data)
    return head[:2] + total.to_bytes(2, "big") + head[4:] + data


class XnuSocket:
    """One ICMP datagram socket (see the module's notice)."""

    def __init__(self, kernel: XnuIcmp) -> None:
        self.kernel = kernel
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.closed = False

    def fileno(self) -> int:
        return self._r.fileno()

    def sendmsg(self, buffers, ancdata, flags, address) -> int:  # type: ignore[no-untyped-def]
        message = b"".join(buffers)
        self.kernel.sent.append((message, address))
        return len(message)

    def deliver(self, datagram: bytes, peer: str) -> None:
        self.inbox.append((datagram, (peer, 0)))
        self._w.send(b"!")  # readable, as the kernel's sorwakeup makes it

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError
        self._r.recv(1)
        datagram = self.inbox.popleft()
        if not any(s.inbox for s in self.kernel.sockets):
            self.kernel.drained.set()  # the last delivery is being read now
        return datagram

    def close(self) -> None:
        self.closed = True
        self._r.close()
        self._w.close()


class XnuIcmp:
    """The host's ICMP sockets and the network behind them: an echo request sent to
    TARGET is answered, and rip_input hands the reply to every open socket."""

    def __init__(self) -> None:
        self.sockets: list[XnuSocket] = []
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.drained = asyncio.Event()  # every delivered message read

    def open(self, family: int, kind: int, **options: object) -> XnuSocket:
        assert (family, kind, options["proto"]) == (
            socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP
        )  # fmt: skip
        sock = XnuSocket(self)
        self.sockets.append(sock)
        return sock

    def answer(self) -> None:
        self.drained.clear()
        self._answer()

    def _answer(self) -> None:
        """The target's kernel answers each request (type 0, the same id, seq and
        data), and XNU delivers it to every open socket, its own request's too."""
        for message, (dst, _port) in self.sent:
            assert rfc1071(message) == 0, "icmp_dgram_send sends the checksum as written"
            reply = bytes([0, 0, 0, 0]) + message[4:]
            reply = reply[:2] + rfc1071(reply).to_bytes(2, "big") + reply[4:]
            for sock in self.sockets:
                if not sock.closed:
                    sock.deliver(xnu_ipv4_delivery(reply, src=dst), dst)
        self.sent.clear()
