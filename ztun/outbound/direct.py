"""Direct outbound: same interface as SOCKS5, but ztun connects to the target itself.

Failures raise `TargetUnreachable` carrying the SOCKS5 reply code a proxy would have
sent, so the engine maps direct and proxied failures the same way. The sockets get the
same fwmark / bind_interface as proxy connections, or they would loop through the TUN.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from .base import DatagramHandler, TcpStream
from .errors import TargetUnreachable
from .sockets import connect_tcp, describe, make_socket, resolve, sockaddr_for
from .socks5_proto import Reply
from .target import Target

log = logging.getLogger(__name__)

#: Local (network, address, port) of ztun's own direct sockets: every open TCP connection,
#: and each socket of an open UDP association (on the wildcard address: an unconnected
#: socket's source address is chosen per datagram by the routes). When the routes send
#: one back into the TUN (a `direct` rule without --auto-route, --fwmark or --interface
#: to keep ztun's own sockets out), it arrives as a new flow from that address -- a TCP
#: one after its handshake with ztun's own listener completed -- and the engine refuses
#: it as a loop (`is_own_source`) instead of connecting or associating again, and again,
#: until the descriptors run out.
OWN_SOURCES: set[tuple[str, str, int]] = set()
_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def is_own_source(network: str, address: str, port: int) -> bool:
    """Whether a new `network` flow from address:port is one of ztun's own direct sockets
    come back through the TUN. A UDP association's port counts only with an address of
    this host's: in gateway mode another host's app may use the same port number."""
    if (network, address, port) in OWN_SOURCES:
        return True
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return (network, _WILDCARD[family], port) in OWN_SOURCES and _is_local(family, address)


def _is_local(family: int, address: str) -> bool:
    """Whether `address` is one of this host's: only those can be bound (EADDRNOTAVAIL)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


_UDP_READ = 65535
_UDP_BATCH = 64
_ERRNO_REPLY = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.HOST_UNREACHABLE,
}


class DirectOutbound:
    """Connect straight to the target (for rules that bypass the proxy)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.fwmark = fwmark
        self.bind_interface = bind_interface

    def __repr__(self) -> str:
        return "DirectOutbound()"

    async def open_tcp(self, target: Target) -> TcpStream:
        tried: list[tuple[str, str, int]] = []  # in OWN_SOURCES from their SYN on
        local: tuple[str, str, int] | None = None

        def connecting(source: tuple[str, int]) -> None:
            own = ("tcp", source[0], source[1])
            OWN_SOURCES.add(own)
            tried.append(own)

        try:
            sock = await connect_tcp(
                target.host,
                target.port,
                timeout=self.connect_timeout,
                fwmark=self.fwmark,
                bind_interface=self.bind_interface,
                on_connecting=connecting,
            )
            address, port = sock.getsockname()[:2]
            local = ("tcp", address, port)
        except TimeoutError:
            raise TargetUnreachable(
                Reply.HOST_UNREACHABLE,
                f"{target}: connect timed out after {self.connect_timeout:g}s",
            ) from None
        except socket.gaierror as exc:
            raise TargetUnreachable(
                Reply.HOST_UNREACHABLE, f"{target}: cannot resolve: {exc.strerror}"
            ) from exc
        except OSError as exc:
            code = _ERRNO_REPLY.get(exc.errno or 0, Reply.GENERAL_FAILURE)
            raise TargetUnreachable(code, f"{target}: {describe(exc)}") from exc
        finally:
            OWN_SOURCES.difference_update(s for s in tried if s != local)
        kept = local
        OWN_SOURCES.add(kept)  # connects without on_connecting (not Linux) too
        return TcpStream(sock, on_release=lambda: OWN_SOURCES.discard(kept))

    async def open_udp(self, on_datagram: DatagramHandler) -> DirectUdpAssociation:
        return DirectUdpAssociation(
            on_datagram, fwmark=self.fwmark, bind_interface=self.bind_interface
        )


class DirectUdpAssociation:
    """Unconnected UDP sockets, one per address family, sending to any destination.

    One socket per family keeps one source port for all destinations (full cone, as a
    SOCKS5 relay behaves). Replies are reported with the sender's IP, never a name:
    datagrams to a domain are sent after resolving it, like a proxy would.
    """

    def __init__(
        self,
        on_datagram: DatagramHandler,
        *,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_datagram = on_datagram
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._dropped = 0
        self._resolving: set[asyncio.Task[None]] = set()
        self._sockets: dict[int, socket.socket] = {}
        self._own: list[tuple[str, str, int]] = []  # what it put in OWN_SOURCES
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                self._open(family, fwmark, bind_interface)
        except BaseException:
            self.close()
            raise

    def _open(self, family: int, fwmark: int | None, bind_interface: str | None) -> None:
        try:
            sock = make_socket(
                family, socket.SOCK_DGRAM, fwmark=fwmark, bind_interface=bind_interface
            )
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:  # e.g. IPv6 disabled: that family is off
                return
            raise
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Bound now, not by the first sendto: its port is in OWN_SOURCES before any
            # datagram of it can come back through the TUN.
            sock.bind((_WILDCARD[family], 0))
        except BaseException:
            sock.close()
            raise
        own = ("udp", _WILDCARD[family], sock.getsockname()[1])
        OWN_SOURCES.add(own)
        self._own.append(own)
        self._sockets[family] = sock
        self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    @property
    def closed(self) -> asyncio.Future[None]:
        return self._closed

    @property
    def dropped(self) -> int:
        return self._dropped

    def send(self, target: Target, payload: bytes) -> None:
        if self._closed.done():
            self._dropped += 1
        elif target.ip is None:
            task = self._loop.create_task(self._resolve_and_send(target, payload))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)
        else:
            self._sendto(target.family, sockaddr_for(target.ip, target.port), payload)

    def close(self) -> None:
        if self._closed.done():
            return
        for task in self._resolving:
            task.cancel()
        for sock in self._sockets.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        OWN_SOURCES.difference_update(self._own)
        self._closed.set_result(None)

    # -- internals ----------------------------------------------------------------------

    async def _resolve_and_send(self, target: Target, payload: bytes) -> None:
        try:
            candidates = await resolve(target.host, target.port, socket.SOCK_DGRAM)
        except OSError as exc:
            self._dropped += 1
            log.debug("direct UDP: cannot resolve %s: %s", target, exc)
            return
        for family, sockaddr in candidates:
            if family in self._sockets:
                self._sendto(family, sockaddr, payload)
                return
        self._dropped += 1

    def _sendto(self, family: int, sockaddr: tuple[object, ...], payload: bytes) -> None:
        sock = self._sockets.get(family)
        if sock is None or self._closed.done():
            self._dropped += 1
            return
        try:
            sock.sendto(payload, sockaddr)
        except OSError as exc:
            self._dropped += 1
            log.debug("direct UDP: datagram to %s dropped: %s", sockaddr, exc)

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(_UDP_BATCH):
            try:
                payload, addr = sock.recvfrom(_UDP_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier datagram: nothing to deliver
                continue
            try:
                self._on_datagram(Target(addr[0], addr[1]), payload)
            except Exception:
                log.exception("direct UDP: datagram handler failed")
