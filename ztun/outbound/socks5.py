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
from collections.abc import Callable

from .base import DatagramHandler, TcpStream, UdpAssociation
from .dialer import ProxyOutboundBase
from .errors import (
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    UdpNotSupported,
)
from .opening import Done, Opening, release_stream, until_done
from .sockets import SockAddr, describe, make_socket, resolve, sockaddr_for
from .socks5_proto import (
    AuthFailed,
    Command,
    MethodSelected,
    NoAcceptableMethods,
    PipelineState,
    Pipelining,
    RemoteProtocolError,
    Reply,
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
#: How long a pipelined handshake on trial may wait for each answer before the proxy is
#: suspected of having dropped the request sent with the greeting (microsocks waits for it
#: forever). The reply also waits for the proxy's connect to the target, so a slow target
#: looks the same; the flow is then carried apart, and that redo tells the two apart: a
#: reply within this long of its request says the proxy answers requests promptly, so the
#: pipelined one was dropped (pipelining off); a slower one blames the target (another
#: trial later). A trial that got not even the method selection is judged by the redo's
#: (from its start): prompt, the pipelined greeting went unanswered; slow, the proxy is
#: (a forwarder in front of it), which says nothing about pipelining. Once pipelining is
#: on, the usual bounds apply: a proxy that starts dropping early requests (another
#: server now at that address) is found when the flow's own limit cuts a handshake short
#: after the method selection.
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

    def start_tcp(self, target: Target, on_done: Done[TcpStream], *, trial: bool = True) -> Opening:
        """CONNECT to `target` by callbacks (`opening`); the stream's `early` holds bytes
        that came with the reply. `trial=False`: it may not be the pipelining trial."""

        def connected(
            result: tuple[socket.socket, Target, bytes] | None, exc: BaseException | None
        ) -> None:
            on_done(None if result is None else TcpStream(result[0], result[2]), exc)

        return _Handshake(self, Command.CONNECT, target, connected, trial=trial).start()

    async def open_tcp(self, target: Target) -> TcpStream:
        """`start_tcp`, awaited."""
        return await until_done(
            lambda on_done: self.start_tcp(target, on_done), dispose=release_stream
        )

    async def open_probe(self, target: Target) -> TcpStream:
        """`open_tcp` for a health probe (see `Outbound`): pipelined once pipelining is on,
        never its trial. A trial waits up to PIPELINE_TRIAL_TIMEOUT for a reply and is
        then redone apart: against a proxy that drops the request (microsocks) a probe
        whose own timeout is 1 s ran out first and took the proxy down, or timed the
        trial (~1002 ms) instead of the proxy."""
        return await until_done(
            lambda on_done: self.start_tcp(target, on_done, trial=False), dispose=release_stream
        )

    async def open_udp(self, on_datagram: DatagramHandler) -> Socks5UdpAssociation:
        """UDP ASSOCIATE; the association lives as long as its TCP control connection."""
        try:
            control, bound, _early = await until_done(
                lambda on_done: _Handshake(self, Command.UDP_ASSOCIATE, None, on_done).start(),
                dispose=_close_first,
            )
        except ProxyRefused as exc:
            if exc.reply_code != Reply.COMMAND_NOT_SUPPORTED:
                raise
            # A server without UDP ASSOCIATE (microsocks): the app's UDP is refused as a
            # TCP-only proxy's is (ICMP port unreachable at once), not left to time out.
            raise UdpNotSupported(
                f"{exc}: it carries no UDP (--udp-proxy, or udp = false in a config file, "
                "sends UDP elsewhere)"
            ) from exc
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

    def _pipelining_failed(self, why: str, turned_off: bool) -> None:
        if turned_off:  # logged once per proxy, not once per flow in flight
            log.info(
                "%s: no reply to a CONNECT sent with the greeting (%s); "
                "sending them apart from now on",
                self.url.label,
                why,
            )

    def _attempt(
        self,
        command: Command,
        target: Target | None,
        on_done: Done[tuple[socket.socket, Target, bytes]],
        *,
        pipeline: bool,
        handshake_timeout: float | None = None,
        then_timeout: float | None = None,
        on_event: Callable[[object], None] | None = None,
    ) -> Opening:
        """One connection to the proxy and one handshake on it; `on_event` sees each of the
        core's events as it comes (how far a handshake got, and when)."""
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
            return core

        def settle(event: object) -> Target | None:
            if on_event is not None:
                on_event(event)
            if isinstance(event, RequestSucceeded):
                if log.isEnabledFor(logging.DEBUG):
                    how = "pipelined" if pipeline else "apart"
                    log.debug(
                        "%s: %s %s established (%s)", self.url.label, command.name, requested, how
                    )
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

        return self._dialer.start_handshake(
            make_core,
            settle,
            on_done,
            protocol="SOCKS5",
            handshake_timeout=handshake_timeout,
            then_timeout=then_timeout,
        )

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


class _Handshake:
    """One SOCKS5 handshake through `outbound`, by callbacks (an `opening.Opening`).

    Only CONNECT is pipelined (the per-connection path), and never with credentials;
    whether it is, is the proxy's `Pipelining` (learned). A pipelined handshake that ends
    without a reply is redone apart, once: after garbage or a close pipelining is off;
    after no answer in time, the redo's reply delay decides (`Pipelining.redo_answered`).
    """

    __slots__ = (
        "_answered_at",
        "_greeting_unanswered",
        "_learn",
        "_on_done",
        "_opening",
        "_outbound",
        "_pipelined",
        "_redo_decides",
        "_redo_started_at",
        "_request",
        "_trial",
        "_unanswered",
    )

    def __init__(
        self,
        outbound: Socks5Outbound,
        command: Command,
        target: Target | None,
        on_done: Done[tuple[socket.socket, Target, bytes]],
        *,
        trial: bool = True,
    ) -> None:
        self._outbound = outbound
        self._request = (command, target)
        self._trial = trial  # it may be the pipelining trial (not a health probe)
        self._on_done: Done[tuple[socket.socket, Target, bytes]] | None = on_done
        self._learn = command is Command.CONNECT and outbound.url.username is None
        self._pipelined = False  # the attempt under way sent the request with the greeting
        self._redo_decides = False  # the attempt under way is a redo whose delay decides
        self._unanswered = ""  # why the pipelined attempt before the redo ended
        self._greeting_unanswered = False  # ... before its method selection, even
        self._redo_started_at = 0.0
        self._answered_at: float | None = None  # when this attempt's method selection came
        self._opening: Opening | None = None

    def start(self) -> _Handshake:
        outbound = self._outbound
        choice = outbound.pipelining.begin(trial=self._trial) if self._learn else PipelineState.OFF
        if choice is PipelineState.OFF:
            self._opening = outbound._attempt(*self._request, self._apart_done, pipeline=False)
            return self
        # A trial's answers are bounded tightly, each on its own (the reply from the method
        # selection, as the redo's is timed): a proxy that dropped the early request waits
        # forever. Its TCP connect is not (a lost SYN is retransmitted after a second; a
        # connect that times out is the proxy's failure, not pipelining's). Once on, the
        # usual bounds (see PIPELINE_TRIAL_TIMEOUT).
        bound = min(outbound.connect_timeout, PIPELINE_TRIAL_TIMEOUT)
        trial = choice is PipelineState.TRIAL
        try:
            self._opening = outbound._attempt(
                *self._request,
                self._pipelined_done,
                pipeline=True,
                handshake_timeout=bound if trial else None,
                then_timeout=bound if trial else None,
                on_event=self._note,
            )
        except BaseException:
            # No opening to end it: a trial begun would stay running, every later
            # handshake apart. The error is the caller's (the flow's), as from any start.
            outbound.pipelining.abandoned()
            raise
        self._pipelined = True
        return self

    def _note(self, event: object) -> None:
        if isinstance(event, MethodSelected):
            self._answered_at = asyncio.get_running_loop().time()

    def _apart_done(
        self, result: tuple[socket.socket, Target, bytes] | None, exc: BaseException | None
    ) -> None:
        if result is not None and self._learn:
            self._outbound.pipelining.sent_apart_succeeded()
        self._finish(result, exc)

    def _pipelined_done(
        self, result: tuple[socket.socket, Target, bytes] | None, exc: BaseException | None
    ) -> None:
        self._pipelined = False
        pipelining = self._outbound.pipelining
        if exc is None or isinstance(exc, ProxyRefused):
            pipelining.pipelined_answered()  # a reply code too: it parsed the request
        elif isinstance(exc, ProxyProtocolError):  # garbage, or a close: it did not
            self._outbound._pipelining_failed(str(exc), pipelining.pipelined_failed())
            self._redo(self._finish)
            return
        elif isinstance(exc, ProxyTimeout):  # a dropped request, or a slow target
            self._unanswered = str(exc)
            self._greeting_unanswered = self._answered_at is None
            self._redo_decides = True
            self._redo(self._redo_done)
            return
        else:
            pipelining.abandoned()
        self._finish(result, exc)

    def _redo(self, on_done: Done[tuple[socket.socket, Target, bytes]]) -> None:
        """Carry this flow apart after a pipelined attempt that got no reply."""
        self._answered_at = None
        self._redo_started_at = asyncio.get_running_loop().time()
        try:
            self._opening = self._outbound._attempt(
                *self._request, on_done, pipeline=False, on_event=self._note
            )
        except Exception as bug:  # this flow's error, as it was when awaited
            self._decided(None)
            self._finish(None, bug)

    def _redo_done(
        self, result: tuple[socket.socket, Target, bytes] | None, exc: BaseException | None
    ) -> None:
        replied = exc is None or isinstance(exc, ProxyRefused)
        answered_at = self._answered_at
        if not replied or answered_at is None:
            self._decided(None)
        elif self._greeting_unanswered:  # time the answer the pipelined attempt lacked
            self._decided(answered_at - self._redo_started_at)
        else:
            self._decided(asyncio.get_running_loop().time() - answered_at)
        self._finish(result, exc)

    def _decided(self, reply_delay: float | None) -> None:
        """The redo after an unanswered pipelined attempt ended: the answer that attempt
        went without (the reply; the method selection, when even that did not come) came
        `reply_delay` seconds after it was asked for (None: the redo got no reply)."""
        if not self._redo_decides:
            return
        self._redo_decides = False
        pipelining = self._outbound.pipelining
        if reply_delay is None:
            pipelining.abandoned()
        else:
            turned_off = pipelining.redo_answered(reply_delay, PIPELINE_TRIAL_TIMEOUT)
            self._outbound._pipelining_failed(self._unanswered, turned_off)

    def _finish(
        self, result: tuple[socket.socket, Target, bytes] | None, exc: BaseException | None
    ) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(result, exc)

    def cancel(self) -> None:
        if self._on_done is None:
            return
        self._on_done = None
        if self._opening is not None:
            self._opening.cancel()
        if self._pipelined:
            # The flow's limit (or its close) ended it: the method selection without the
            # reply is all a dropped request shows then (see `Pipelining.cut_short`).
            self._outbound._pipelining_failed(
                "cancelled after the method selection",
                self._outbound.pipelining.cut_short(
                    greeting_answered=self._answered_at is not None
                ),
            )
        self._decided(None)  # a redo cut short decides nothing


def _close_first(result: tuple[socket.socket, Target, bytes]) -> None:
    result[0].close()


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
