"""SOCKS5 outbound: the asyncio adapter around `socks5_proto.Socks5Client`.

It only moves bytes: connect (with the routing marks), write what the core queued, feed
what the proxy sent, and map the core's events to `OutboundError`s that name the proxy.

`connect_timeout` bounds the TCP connect to the proxy and, separately, the handshake
(a proxy that accepts but stalls raises `ProxyTimeout`). For CONNECT the reply comes only
after the proxy reached the target, so a slow target also counts against the handshake.

UDP ASSOCIATE (RFC 1928 section 7): the request carries all-zero DST.ADDR/DST.PORT (we do
not know the address the proxy will see us from, e.g. behind NAT); the UDP socket is then
connected to the relay, so the kernel discards datagrams from anyone else. Many servers
(danted bound to 0.0.0.0, shadowsocks-style servers) reply with BND.ADDR 0.0.0.0 or ::,
meaning "my address": we then use the address we reached the proxy at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from .base import DatagramHandler, TcpStream, UdpAssociation
from .errors import (
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
)
from .sockets import SockAddr, connect_tcp, describe, make_socket, resolve, sockaddr_for
from .socks5_proto import (
    AuthFailed,
    Command,
    LocalProtocolError,
    NoAcceptableMethods,
    RemoteProtocolError,
    RequestFailed,
    RequestSucceeded,
    Socks5Client,
    UdpHeader,
    decode_udp_header,
    encode_auth,
    encode_udp_header,
)
from .target import Target
from .uplink import Uplink
from .url import ProxyURL, parse_proxy_url

__all__ = ["Socks5Outbound", "Socks5UdpAssociation", "UdpAssociation"]

log = logging.getLogger(__name__)

#: Handshake messages are tiny; one read takes a whole reply plus any early tunnel bytes.
_HANDSHAKE_READ = 4096
#: Largest UDP payload on IPv4 plus the biggest SOCKS5 UDP header.
_UDP_READ = 65535
#: Datagrams read per wake-up, so a flood on one association cannot starve the loop.
_UDP_BATCH = 64
_CONTROL_READ = 512
#: RSV RSV FRAG ATYP + address + port, for the fixed-size address types (IPv4, IPv6).
_FIXED_HEADER_LEN = {1: 4 + 4 + 2, 4: 4 + 16 + 2}
_HEADER_CACHE = 1024
_UNSPECIFIED = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class Socks5Outbound:
    """Open TCP streams and UDP associations through one SOCKS5 proxy."""

    def __init__(
        self,
        url: ProxyURL | str,
        *,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self.url = parse_proxy_url(url) if isinstance(url, str) else url
        if self.url.username is not None:
            try:  # fail at configuration time, not on the first connection
                encode_auth(self.url.username, self.url.password or "")
            except LocalProtocolError as exc:
                raise ValueError(f"proxy {self.url}: {exc}") from None
        self.connect_timeout = connect_timeout
        self.fwmark = fwmark
        self.bind_interface = bind_interface

    def __repr__(self) -> str:
        return f"Socks5Outbound({str(self.url)!r})"

    async def open_tcp(self, target: Target) -> TcpStream:
        """CONNECT to `target`; the stream's `early` holds bytes that came with the reply."""
        sock, _bound, early = await self._handshake(Command.CONNECT, target)
        return TcpStream(sock, early)

    async def open_udp(self, on_datagram: DatagramHandler) -> Socks5UdpAssociation:
        """UDP ASSOCIATE; the association lives as long as its TCP control connection."""
        control, bound, _early = await self._handshake(Command.UDP_ASSOCIATE, None)
        try:
            relay_family, relay = await self._relay_address(control, bound)
            udp = make_socket(
                relay_family,
                socket.SOCK_DGRAM,
                fwmark=self.fwmark,
                bind_interface=self.bind_interface,
            )
            try:
                udp.connect(relay)  # UDP connect() only sets the peer: it never blocks
            except OSError as exc:
                udp.close()
                raise ProxyUnreachable(
                    f"proxy {self.url.address}: cannot reach UDP relay {relay[0]}:{relay[1]}: "
                    f"{describe(exc)}"
                ) from exc
        except BaseException:
            control.close()
            raise
        return Socks5UdpAssociation(control, udp, on_datagram, proxy=self.url.address)

    # -- internals ----------------------------------------------------------------------

    async def _handshake(
        self, command: Command, target: Target | None
    ) -> tuple[socket.socket, Target, bytes]:
        sock = await self._connect()
        try:
            if target is None:  # UDP ASSOCIATE: "all zeros" in the control's family
                target = Target(_UNSPECIFIED.get(sock.family, "0.0.0.0"), 0)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    bound, early = await self._negotiate(sock, command, target)
            except TimeoutError:
                raise ProxyTimeout(
                    f"proxy {self.url.address}: no SOCKS5 answer within {self.connect_timeout:g}s"
                ) from None
            except RemoteProtocolError as exc:
                raise ProxyProtocolError(f"proxy {self.url.address}: {exc}") from None
            except OSError as exc:
                raise ProxyProtocolError(
                    f"proxy {self.url.address}: connection lost during the handshake: "
                    f"{describe(exc)}"
                ) from exc
        except BaseException:
            sock.close()
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug("proxy %s: %s %s established", self.url.address, command.name, target)
        return sock, bound, early

    async def _connect(self) -> socket.socket:
        where = f"proxy {self.url.address}"
        try:
            return await connect_tcp(
                self.url.host,
                self.url.port,
                timeout=self.connect_timeout,
                fwmark=self.fwmark,
                bind_interface=self.bind_interface,
            )
        except TimeoutError:
            raise ProxyUnreachable(
                f"{where}: connect timed out after {self.connect_timeout:g}s"
            ) from None
        except socket.gaierror as exc:
            raise ProxyUnreachable(f"{where}: cannot resolve host: {exc.strerror}") from exc
        except OSError as exc:
            raise ProxyUnreachable(f"{where}: {describe(exc)}") from exc

    async def _negotiate(
        self, sock: socket.socket, command: Command, target: Target
    ) -> tuple[Target, bytes]:
        loop = asyncio.get_running_loop()
        client = Socks5Client(
            command, target, username=self.url.username, password=self.url.password
        )
        while True:
            out = client.data_to_send()
            if out:
                await loop.sock_sendall(sock, out)
            data = await loop.sock_recv(sock, _HANDSHAKE_READ)
            for event in client.receive_data(data):
                if isinstance(event, RequestSucceeded):
                    return event.bound, client.trailing_data
                if isinstance(event, RequestFailed):
                    raise ProxyRefused(
                        event.reply_code,
                        f"proxy {self.url.address} refused {command.name} {target}: "
                        f"{event.reason} ({event.reply_code:#04x})",
                    )
                if isinstance(event, NoAcceptableMethods):
                    raise ProxyAuthFailed(self._no_method_message())
                if isinstance(event, AuthFailed):
                    raise ProxyAuthFailed(
                        f"proxy {self.url.address} rejected username {self.url.username!r} "
                        f"(RFC 1929 status {event.status:#04x})"
                    )

    def _no_method_message(self) -> str:
        offered = "no-auth" + (", username/password" if self.url.username is not None else "")
        hint = (
            "check what the proxy is configured for"
            if self.url.username is not None
            else "it probably wants a username and password: socks5://USER:PASS@HOST:PORT"
        )
        return f"proxy {self.url.address} accepts none of the offered methods ({offered}); {hint}"

    async def _relay_address(self, control: socket.socket, bound: Target) -> tuple[int, SockAddr]:
        if bound.port == 0:
            raise ProxyProtocolError(f"proxy {self.url.address}: UDP relay port 0")
        if bound.ip is None:
            try:
                candidates = await resolve(bound.host, bound.port, socket.SOCK_DGRAM)
            except OSError as exc:
                raise ProxyUnreachable(
                    f"proxy {self.url.address}: cannot resolve UDP relay {bound}: {exc}"
                ) from exc
            if not candidates:
                raise ProxyProtocolError(
                    f"proxy {self.url.address}: UDP relay {bound} resolves to nothing"
                )
            return candidates[0]
        ip = bound.ip
        if ip.is_unspecified:
            ip = ipaddress.ip_address(control.getpeername()[0])
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        return family, sockaddr_for(ip, bound.port)


class Socks5UdpAssociation:
    """One UDP ASSOCIATE: a UDP socket connected to the relay plus the TCP control socket.

    RFC 1928: "A UDP association terminates when the TCP connection that the UDP ASSOCIATE
    request arrived on terminates." So the control socket is watched for EOF and closing
    either side closes both; `closed` completes then. Fragmented datagrams (FRAG != 0) are
    dropped, as the RFC requires of implementations without reassembly.
    """

    def __init__(
        self,
        control: socket.socket,
        udp: socket.socket,
        on_datagram: DatagramHandler,
        *,
        proxy: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._control = control
        self._udp = udp
        self._on_datagram = on_datagram
        self._proxy = proxy
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._dropped = 0
        self._headers: dict[bytes, UdpHeader] = {}
        peer = udp.getpeername()
        self.relay = Target(peer[0], peer[1])
        self._loop.add_reader(control.fileno(), self._on_control_readable)
        self._loop.add_reader(udp.fileno(), self._on_udp_readable)

    def __repr__(self) -> str:
        state = "closed" if self._closed.done() else "open"
        return f"<Socks5UdpAssociation proxy={self._proxy} relay={self.relay} {state}>"

    @property
    def closed(self) -> asyncio.Future[None]:
        return self._closed

    @property
    def dropped(self) -> int:
        return self._dropped

    def send(self, target: Target, payload: bytes) -> None:
        if self._closed.done():
            self._dropped += 1
            return
        try:
            # Gather-write: the payload is not copied to prepend the header.
            self._udp.sendmsg([encode_udp_header(target), payload])
        except OSError as exc:  # buffer full, EMSGSIZE, an ICMP error from the relay
            self._dropped += 1
            log.debug("%r: datagram to %s dropped: %s", self, target, exc)

    def uplink(self, *, gso: bool = True, shared: bool = False) -> Uplink | None:
        """A sender for the TUN pump (None once closed); `gso`: batch equal datagrams with
        UDP_SEGMENT (Linux). On its own descriptor, unless `shared`: a pump that runs on
        the loop's thread can never be sending while the association closes, so it may
        use the association's socket and save a descriptor per flow."""
        if self._closed.done():
            return None
        if shared:
            return Uplink(self._udp, encode_udp_header, gso=gso, owns_socket=False)
        return Uplink(self._udp.dup(), encode_udp_header, gso=gso)

    def close(self) -> None:
        self._teardown("closed locally")

    # -- internals ----------------------------------------------------------------------

    def _on_control_readable(self) -> None:
        try:
            data = self._control.recv(_CONTROL_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._teardown(f"control connection failed: {describe(exc)}")
            return
        if not data:
            self._teardown("proxy closed the control connection")
        else:  # RFC 1928 defines nothing on the control connection after the reply
            log.debug("%r: ignored %d bytes on the control connection", self, len(data))

    def _on_udp_readable(self) -> None:
        for _ in range(_UDP_BATCH):
            try:
                datagram = self._udp.recv(_UDP_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP error queued on the connected socket
                log.debug("%r: relay error: %s", self, describe(exc))
                continue
            # Replies come from a few sources: decode each distinct IP header once.
            fixed = _FIXED_HEADER_LEN.get(datagram[3]) if len(datagram) > 3 else None
            header = self._headers.get(datagram[:fixed]) if fixed else None
            if header is None:
                try:
                    header = decode_udp_header(datagram)
                except RemoteProtocolError as exc:
                    self._dropped += 1
                    log.debug("%r: bad datagram from the relay: %s", self, exc)
                    continue
                if fixed and len(self._headers) < _HEADER_CACHE:
                    self._headers[datagram[:fixed]] = header
            if header.frag:
                self._dropped += 1
                continue
            try:
                self._on_datagram(header.target, datagram[header.length :])
            except Exception:
                log.exception("%r: datagram handler failed", self)

    def _teardown(self, why: str) -> None:
        if self._closed.done():
            return
        log.debug("%r: %s", self, why)
        for sock in (self._udp, self._control):
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._closed.set_result(None)
