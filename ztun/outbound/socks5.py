"""SOCKS5 outbound: the asyncio adapter around `socks5_proto.Socks5Client`.

`dialer.ProxyDialer` moves the bytes (connect with the routing marks, write what the core
queued, feed what the proxy sent, bound it all by `connect_timeout`); this module maps the
core's events to `OutboundError`s that name the proxy, and runs UDP associations.

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
from .dialer import ProxyOutboundBase
from .errors import (
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
)
from .sockets import SockAddr, describe, make_socket, resolve, sockaddr_for
from .socks5_proto import (
    AuthFailed,
    Command,
    NoAcceptableMethods,
    PipelineState,
    Pipelining,
    RemoteProtocolError,
    RequestFailed,
    RequestSucceeded,
    Socks5Client,
    State,
    UdpHeader,
    decode_udp_header,
    encode_auth,
    encode_udp_header,
)
from .target import Target
from .uplink import Uplink
from .url import ProxyURL

__all__ = ["Socks5Outbound", "Socks5UdpAssociation", "UdpAssociation"]

log = logging.getLogger(__name__)

#: Largest UDP payload on IPv4 plus the biggest SOCKS5 UDP header.
_UDP_READ = 65535
#: Datagrams read per wake-up, so a flood on one association cannot starve the loop.
_UDP_BATCH = 64
_CONTROL_READ = 512
#: RSV RSV FRAG ATYP + address + port, for the fixed-size address types (IPv4, IPv6).
_FIXED_HEADER_LEN = {1: 4 + 4 + 2, 4: 4 + 16 + 2}
_HEADER_CACHE = 1024
#: How long a first pipelined handshake may take before the proxy is taken to have dropped
#: the request sent with the greeting (microsocks waits for it forever); the reply also
#: waits for the proxy's connect to the target, so a slow target can fail a trial too:
#: then that one flow is carried apart and pipelining stays off - correct, only slower.
#: Once pipelining is on, the reply gets as long after the method selection (a proxy that
#: starts dropping early requests - another server now at that address - is found so).
PIPELINE_TRIAL_TIMEOUT = 1.0
_UNSPECIFIED = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class Socks5Outbound(ProxyOutboundBase):
    """Open TCP streams and UDP associations through one SOCKS5 proxy."""

    def __init__(
        self,
        url: ProxyURL | str,
        *,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        super().__init__(
            url, connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
        )
        #: Whether CONNECTs go out with the greeting (learned: see `Pipelining`).
        self.pipelining = Pipelining(enabled=self.url.username is None)

    def _check_url(self) -> None:
        if self.url.username is not None:
            encode_auth(self.url.username, self.url.password or "")

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
                    f"{self.url.label}: cannot reach UDP relay {relay[0]}:{relay[1]}: "
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
        # Only CONNECT is pipelined (the per-connection path), and never with credentials.
        learn = command is Command.CONNECT and self.url.username is None
        choice = self.pipelining.begin() if learn else PipelineState.OFF
        if choice is PipelineState.OFF:
            result = await self._attempt(command, target, pipeline=False)
            if learn:
                self.pipelining.sent_apart_succeeded()
            return result
        # A trial is bounded tightly: a proxy that dropped the early request waits forever.
        # Once on, the connect and the method selection get the usual time, the reply as
        # long as a trial's: the flow's own limit would otherwise always end it first.
        timeout, then_timeout = self.connect_timeout, PIPELINE_TRIAL_TIMEOUT
        if choice is PipelineState.TRIAL:
            timeout = min(timeout, PIPELINE_TRIAL_TIMEOUT)
        cores: list[Socks5Client] = []
        try:
            result = await self._attempt(
                command,
                target,
                pipeline=True,
                timeout=timeout,
                then_timeout=then_timeout,
                cores=cores,
            )
        except (ProxyProtocolError, ProxyTimeout) as exc:
            self._pipelining_failed(str(exc), self.pipelining.pipelined_failed())
            return await self._attempt(command, target, pipeline=False)
        except ProxyRefused:
            self.pipelining.pipelined_answered()  # a reply code: it parsed the request
            raise
        except asyncio.CancelledError:
            # The flow's limit (or its close) ended it: the method selection without the
            # reply is all a dropped request shows then (see `Pipelining.cut_short`).
            answered = bool(cores) and cores[-1].state is State.AWAIT_REPLY
            self._pipelining_failed(
                "cancelled after the method selection",
                self.pipelining.cut_short(greeting_answered=answered),
            )
            raise
        except BaseException:
            self.pipelining.abandoned()
            raise
        self.pipelining.pipelined_answered()
        return result

    def _pipelining_failed(self, why: str, turned_off: bool) -> None:
        if turned_off:  # logged once per proxy, not once per flow in flight
            log.info(
                "%s: no reply to a CONNECT sent with the greeting (%s); "
                "sending them apart from now on",
                self.url.label,
                why,
            )

    async def _attempt(
        self,
        command: Command,
        target: Target | None,
        *,
        pipeline: bool,
        timeout: float | None = None,
        then_timeout: float | None = None,
        cores: list[Socks5Client] | None = None,
    ) -> tuple[socket.socket, Target, bytes]:
        """One connection to the proxy and one handshake on it; each core made is appended
        to `cores` (its state tells how far a handshake that did not end got)."""
        requested = target

        def make_core(sock: socket.socket) -> Socks5Client:
            nonlocal requested
            if requested is None:  # UDP ASSOCIATE: "all zeros" in the control's family
                requested = Target(_UNSPECIFIED.get(sock.family, "0.0.0.0"), 0)
            core = Socks5Client(
                command,
                requested,
                username=self.url.username,
                password=self.url.password,
                pipeline=pipeline,
            )
            if cores is not None:
                cores.append(core)
            return core

        def settle(event: object) -> Target | None:
            if isinstance(event, RequestSucceeded):
                return event.bound
            if isinstance(event, RequestFailed):
                raise ProxyRefused(
                    event.reply_code,
                    f"{self.url.label} refused {command.name} {requested}: "
                    f"{event.reason} ({event.reply_code:#04x})",
                )
            if isinstance(event, NoAcceptableMethods):
                raise ProxyAuthFailed(self._no_method_message())
            if isinstance(event, AuthFailed):
                raise ProxyAuthFailed(
                    f"{self.url.label} rejected username {self.url.username!r} "
                    f"(RFC 1929 status {event.status:#04x})"
                )
            return None

        sock, bound, early = await self._dialer.handshake(
            make_core, settle, protocol="SOCKS5", timeout=timeout, then_timeout=then_timeout
        )
        if log.isEnabledFor(logging.DEBUG):
            how = "pipelined" if pipeline else "apart"
            log.debug("%s: %s %s established (%s)", self.url.label, command.name, requested, how)
        return sock, bound, early

    def _no_method_message(self) -> str:
        offered = "no-auth" + (", username/password" if self.url.username is not None else "")
        hint = (
            "check what the proxy is configured for"
            if self.url.username is not None
            else "it probably wants a username and password: socks5://USER:PASS@HOST:PORT"
        )
        return f"{self.url.label} accepts none of the offered methods ({offered}); {hint}"

    async def _relay_address(self, control: socket.socket, bound: Target) -> tuple[int, SockAddr]:
        if bound.port == 0:
            raise ProxyProtocolError(f"{self.url.label}: UDP relay port 0")
        if bound.ip is None:
            try:
                candidates = await resolve(bound.host, bound.port, socket.SOCK_DGRAM)
            except OSError as exc:
                raise ProxyUnreachable(
                    f"{self.url.label}: cannot resolve UDP relay {bound}: {exc}"
                ) from exc
            if not candidates:
                raise ProxyProtocolError(f"{self.url.label}: UDP relay {bound} resolves to nothing")
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
