"""`--icmp direct`: the apps' pings sent for real, from ztun's host, through unprivileged
ICMP sockets -- the I/O half of `ztun.stack.icmpecho` (which holds the policy); what
the sockets read and write on each OS is `ztun.icmp_sockets`.

An unprivileged ICMP socket (SOCK_DGRAM with IPPROTO_ICMP / IPPROTO_ICMPV6: Linux 3.0+,
macOS) sends echo requests. On Linux it receives only the echo replies that carry its
own identifier (the kernel fills in the identifier and the checksum), and creating one
needs the process's group inside `net.ipv4.ping_group_range` of its network namespace
(it covers ICMPv6 too); the kernel's default, "1 0", allows nobody -- not even root,
which is why `check` runs at start-up and names the sysctl. On macOS anyone may open
one, and it receives every ICMP message: the codec keeps the session's own replies.
The sockets carry ztun's fwmark and interface binding, so the echoes go out around the
TUN (like every outbound socket of ztun).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable

from .flows import FlowRecord, FlowTable
from .icmp_sockets import EchoCodec, codec_for
from .outbound.errors import OutboundError
from .outbound.sockets import make_socket
from .stack import IcmpEchoRequest, SystemStack
from .stack.icmpecho import EchoSession, EchoSessions

log = logging.getLogger("ztun")

_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_PROTO = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_READ = 65535
_READ_BATCH = 64
#: What the app is told when ztun's host has no route at all (RFC 792 codes 0/1, RFC 4443
#: codes 0/3): the answer the app's host would have given it without a tunnel.
_UNREACHABLE = {
    (4, errno.ENETUNREACH): 0,
    (4, errno.EHOSTUNREACH): 1,
    (6, errno.ENETUNREACH): 0,
    (6, errno.EHOSTUNREACH): 3,
}

PING_GROUP_HINT = (
    "unprivileged ICMP sockets need this process's group in net.ipv4.ping_group_range "
    "(in ztun's network namespace): sysctl -w net.ipv4.ping_group_range='0 2147483647'"
)


def check(versions: tuple[int, ...]) -> None:
    """Raise OSError, saying what to do, unless ICMP sockets can be opened here."""
    for version in versions:
        try:
            socket.socket(_FAMILY[version], socket.SOCK_DGRAM, _PROTO[version]).close()
        except OSError as exc:
            hint = f"; {PING_GROUP_HINT}" if sys.platform == "linux" else ""
            raise OSError(
                exc.errno, f"--icmp direct: cannot open an ICMPv{version} socket "
                f"({exc.strerror}){hint}"
            ) from None  # fmt: skip


class _EchoIo:
    """One session's socket, and its meter in the flow table (payload bytes each way:
    one integer increment per echo)."""

    __slots__ = ("bytes_down", "bytes_up", "ident", "record", "sock")
    half_closed = False

    def __init__(self, sock: socket.socket, ident: int, record: FlowRecord | None) -> None:
        self.sock = sock
        self.ident = ident  # what the requests carry (the codec's; Linux: the kernel's)
        self.record = record
        self.bytes_up = 0
        self.bytes_down = 0


class IcmpForwarder:
    """Sends echo requests from the TUN, writes the network's echo replies back to it."""

    def __init__(
        self,
        stack: SystemStack,
        write_packet: Callable[[bytearray], None],
        stats: Counter[str],
        lock: threading.Lock,
        *,
        fwmark: int | None = None,
        bind_interface: str | None = None,
        flows: FlowTable | None = None,
        codec: EchoCodec | None = None,
        open_socket: Callable[..., socket.socket] = make_socket,
    ) -> None:
        """`codec`: this OS's ICMP socket bytes (`ztun.icmp_sockets`); `open_socket`:
        `make_socket`'s signature (tests hand in a recording socket)."""
        self.stack = stack
        self.codec = codec if codec is not None else codec_for(sys.platform)
        self._open_socket = open_socket
        self.flows = flows
        self.write_packet = write_packet
        self.stats = stats
        self.lock = lock
        self.fwmark = fwmark
        self.bind_interface = bind_interface
        self.sessions = EchoSessions(stats)
        self._ios: dict[EchoSession, _EchoIo] = {}
        self._loop = asyncio.get_running_loop()

    def on_request(self, request: IcmpEchoRequest, now: float) -> None:
        session, evicted = self.sessions.request(request, now)
        for old in evicted:
            self._close(old)
        io = self._ios.get(session) or self._open(session, request, now)
        if io is None:
            return
        sock = io.sock
        io.bytes_up += len(request.payload)
        message = self.codec.request(request.version, io.ident, request.seq, request.payload)
        destination = socket.inet_ntop(_FAMILY[request.version], request.dst)
        try:
            sock.sendmsg([message, request.payload], [], 0, (destination, 0))
        except BlockingIOError:
            self.stats["icmp_echo_send_dropped"] += 1
        except OSError as exc:
            code = _UNREACHABLE.get((request.version, exc.errno or 0))
            if code is None:
                self.stats["icmp_echo_send_failed"] += 1
                log.debug("ICMP echo to %s failed: %s", destination, exc)
                return
            self.stats["icmp_echo_unreachable"] += 1
            with self.lock:
                packet = self.stack.echo_failed(request, code)
            self.write_packet(packet)

    def _open(self, session: EchoSession, request: IcmpEchoRequest, now: float) -> _EchoIo | None:
        try:
            sock = self._open_socket(
                _FAMILY[session.version],
                socket.SOCK_DGRAM,
                proto=_PROTO[session.version],
                fwmark=self.fwmark,
                bind_interface=self.bind_interface,
            )
        # EMFILE, a vanished interface; OutboundError: the fwmark or interface option was
        # refused (make_socket's word for a configuration problem). Either costs this
        # echo only: the pump's batch goes on with its other datagrams.
        except (OSError, ValueError, OutboundError) as exc:
            self.stats["icmp_echo_socket_failed"] += 1
            log.warning("--icmp direct: cannot open an ICMP socket: %s", exc)
            self.sessions.forget(session)
            return None
        record = None
        if self.flows is not None:  # an echo id is a flow: `ztun flows` lists it
            family = _FAMILY[session.version]
            record = self.flows.add(
                "icmp",
                (socket.inet_ntop(family, session.app), session.ident),
                (socket.inet_ntop(family, request.dst), 0),
                now,
                closer=lambda: self._close(session),
            )
            self.flows.routed(record, "direct")
        io = _EchoIo(sock, self.codec.open(session.version), record)
        if record is not None and self.flows is not None:
            self.flows.connected(record, io)
        self._ios[session] = io
        self._loop.add_reader(sock.fileno(), self._on_readable, session, io)
        return io

    def _on_readable(self, session: EchoSession, io: _EchoIo) -> None:
        sock, version, ident = io.sock, session.version, io.ident
        for _ in range(_READ_BATCH):
            try:
                message, peer = sock.recvfrom(_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued for the socket: not a reply
                log.debug("ICMP socket error: %s", exc)
                continue
            reply = self.codec.reply(version, ident, message)
            if reply is None:
                continue  # not this session's echo reply (an error, another's reply)
            source = socket.inet_pton(_FAMILY[version], peer[0].split("%")[0])
            io.bytes_down += len(reply.payload)
            self.write_packet(self.sessions.reply(session, source, reply.seq, reply.payload))

    def expire(self, now: float) -> None:
        for session in self.sessions.expire(now):
            self._close(session)

    def _close(self, session: EchoSession) -> None:
        io = self._ios.pop(session, None)
        if io is not None:
            self._loop.remove_reader(io.sock.fileno())
            io.sock.close()
            self.codec.close(io.ident)
            if io.record is not None and self.flows is not None:
                self.flows.remove(io.record, self._loop.time(), "ended")
        self.sessions.forget(session)

    def close(self) -> None:
        for session in list(self._ios):
            self._close(session)
