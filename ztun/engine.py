"""The engine: one asyncio loop wiring the TUN device, the system stack and the outbounds.

It only moves bytes (aioquic's asyncio adapter is the model): read packets from the
device in batches into one reusable buffer, feed the sans-IO stack, write what it
returns; accept hairpinned TCP connections and relay them through an outbound; carry UDP
sessions over associations; re-arm one timer for the stack's expiries.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .flows import FlowRecord, FlowTable
from .outbound import (
    Outbound,
    OutboundError,
    ProxyRefused,
    Rejected,
    Target,
    TcpStream,
    UdpAssociation,
)
from .outbound.direct import OWN_SOURCES, is_own_source
from .outbound.opening import Opening, release_stream, start_tcp
from .outbound.uplink import Uplink
from .pump import TunPump
from .relay import HAVE_SPLICE, SHARED_BUFFER_SIZE, PipePool, Relay, close_with_reset
from .router import Decision, LoopDetected, Router
from .rules import Action
from .stack import (
    IcmpEchoRequest,
    IcmpMode,
    SystemStack,
    TcpSession,
    TcpSessionExpired,
    UdpDatagram,
    UdpSessionExpired,
)
from .stack.udpflow import (
    CloseAssociation,
    FlowState,
    OpenAssociation,
    PumpRoute,
    SendDatagram,
    UdpFlow,
    UdpFlowEvent,
    UdpFlows,
    UdpRoute,
    Unreachable,
)
from .tun import Device
from .tun.base import has_descriptor

if TYPE_CHECKING:
    from .dns import DnsHandler
    from .dnsflow import DnsService
    from .icmp_direct import IcmpForwarder
    from .kernelnat import KernelNat

log = logging.getLogger("ztun")

ACCEPT_BATCH = 64
DNS_PORT = 53
# What ends a loop of ztun's own direct sockets through its TUN (said with each refusal).
_KEEP_OUT = "(keep ztun's sockets out of the routes into it: --auto-route, or --fwmark/--interface)"


SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


def original_destination(
    conn: socket.socket,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Where a connection nftables redirected was going (conntrack's original tuple)."""
    if conn.family == socket.AF_INET6:
        try:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, _flowinfo, addr = struct.unpack_from("!2xHI16s", raw)
            ip = ipaddress.IPv6Address(addr)
            return (ip.ipv4_mapped or ip), port
        except OSError:
            pass  # an IPv4 connection on the dual-stack listener: ask the IPv4 table
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    return ipaddress.IPv4Address(addr), port


@functools.lru_cache(maxsize=4096)
def _address(raw: bytes) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
    """The address object and text of 4 or 16 address bytes. Kept: every new connection
    names its client and server, the same few again and again, and `ipaddress` parses
    and formats in Python (microseconds per connection)."""
    ip = ipaddress.ip_address(raw)
    return ip, str(ip)


def _ip_text(raw: bytes) -> str:
    return _address(raw)[1]


def _source(flow: UdpFlow[Outbound, Target]) -> str:
    return f"{_ip_text(flow.session.client_addr)}:{flow.session.client_port}"


@dataclass(eq=False, slots=True)
class _UdpFlowIo:
    """What the engine holds for one UDP flow of the core: its set-up, its association,
    and the uplink the pump sends on (the policy is `ztun.stack.udpflow`'s).

    It is also the flow's meter in the flow table: payload bytes the loop sent (`sent`)
    and received (`received`), one integer increment per datagram, plus what the pump
    sent itself on the uplink (counted there)."""

    record: FlowRecord
    task: asyncio.Task[None] | None = None
    association: UdpAssociation | None = None
    uplink: Uplink | None = None
    sent: int = 0
    received: int = 0

    @property
    def bytes_up(self) -> int:
        uplink = self.uplink
        return self.sent + (uplink.octets if uplink is not None else 0)

    @property
    def bytes_down(self) -> int:
        return self.received

    @property
    def half_closed(self) -> bool:
        return False  # UDP has no FIN


def bind_redirect_listeners() -> list[socket.socket]:
    """127.0.0.1:P and [::1]:P, non-blocking: nftables' REDIRECT in the OUTPUT hook
    rewrites to loopback, so nothing off this host (nor a connection that was never
    redirected) can reach these listeners and make ztun connect to itself."""
    port = 0
    listeners: list[socket.socket] = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if family == socket.AF_INET6:
                log.warning("redirect: no IPv6 loopback listener (%s); IPv4 only", exc)
                break
            for bound in listeners:
                bound.close()
            raise
        sock.listen(4096)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        listeners.append(sock)
    return listeners


class _TcpSetup:
    """One TCP flow from accept to its relay: route it, open its outbound within the
    connect timeout, then hand it to `Engine._relay_tcp` -- or reset the app.

    Driven by loop callbacks (`ztun.outbound.opening`): no Task per flow, and the timeout
    is one timer handle cancelled when the outbound answers. A Task runs only where
    something must be awaited: a sniff of the app's first bytes, or an outbound without
    callbacks (`opening.start_tcp` wraps its coroutine). `cancel()` is the flow's closer
    until the relay takes over (`ztun close`, `ztun stop`): the app gets a reset.
    """

    __slots__ = (
        "client",
        "conn",
        "dst",
        "engine",
        "opening",
        "port",
        "record",
        "session",
        "started",
        "task",
        "timer",
    )

    def __init__(
        self,
        engine: Engine,
        conn: socket.socket,
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        client: tuple[str, int],
        session: TcpSession | None,
    ) -> None:
        self.engine = engine
        self.conn = conn
        self.dst = dst
        self.port = port
        self.client = client
        self.session = session
        # Accepted a hairpin's (or redirect's) handshake ago: microseconds after the SYN.
        self.started = engine.loop.time()
        self.record = engine.flows.add("tcp", client, (dst, port), self.started, closer=self.cancel)
        self.opening: Opening | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self.engine.setups.add(self)
        if self.engine.router.sniff_timeout:
            self.task = self.engine.loop.create_task(self._sniff())
        else:
            self._route(None)

    async def _sniff(self) -> None:
        try:
            domain = await self.engine.router.sniff(self.conn)
        except Exception as exc:
            if self in self.engine.setups:
                self._failed(exc)
            return
        if self not in self.engine.setups:  # closed meanwhile: `cancel` resets the app
            return
        self.task = None
        self._route(domain)

    def _route(self, domain: str | None) -> None:
        engine = self.engine
        try:
            if is_own_source("tcp", *self.client):
                raise LoopDetected(
                    f"ztun's own connect from {self.client[0]}:{self.client[1]} to "
                    f"{self.dst}:{self.port} came back into the TUN {_KEEP_OUT}"
                )
            dns = engine.dns
            if dns is not None and self.port == DNS_PORT and dns.answers_tcp:
                self._leave()
                engine._answer_dns_over_tcp(self, dns)
                return
            decision = engine.router.decide("tcp", self.dst, self.port, domain)
            upstream = (
                engine.dns.tcp_upstream()
                if engine.dns is not None and self.port == DNS_PORT
                else None
            )
            if upstream is not None:
                decision = engine.router.dns_upstream(upstream)
            engine.flows.routed(self.record, engine.outbound_name(decision, "tcp"), decision.domain)
            if decision.action is Action.REJECT:
                raise Rejected(f"rule rejects {decision.target}")
            loop = engine.loop
            self.timer = loop.call_at(loop.time() + engine.connect_timeout, self._timed_out)
            self.opening = start_tcp(decision.outbound, decision.target, self._opened)
        except Exception as exc:
            self._failed(exc)

    def _timed_out(self) -> None:
        self.timer = None
        if self not in self.engine.setups:  # ended already
            return
        if self.opening is not None:
            self.opening.cancel()
            self.opening = None
        self._failed(TimeoutError())

    def _opened(self, stream: TcpStream | None, exc: BaseException | None) -> None:
        self.opening = None
        if self not in self.engine.setups:  # ended already (an opener broke its contract)
            if stream is not None:
                release_stream(stream)
            return
        if stream is None:
            self._failed(exc or OutboundError("opened nothing"))
            return
        self._leave()
        self.engine._relay_tcp(self, stream)

    def _leave(self) -> None:
        """The set-up is over: its timer goes, and the engine no longer counts it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.engine.setups.discard(self)

    def _failed(self, exc: BaseException) -> None:
        engine = self.engine
        self._leave()
        stats, source, dst, port = engine.stats, self.client[0], self.dst, self.port
        if isinstance(exc, LoopDetected):
            stats["tcp_loop_refused"] += 1
            log.error("refused a routing loop: %s", exc)
            reason = "loop"
        elif isinstance(exc, Rejected):
            stats["tcp_rejected"] += 1
            reason = "rejected"
        elif isinstance(exc, OutboundError | OSError | TimeoutError):
            stats["tcp_outbound_failed"] += 1
            log.warning("TCP %s -> %s:%d: %s", source, dst, port, exc or type(exc).__name__)
            reason = "outbound_failed"
        else:
            # A bug or an input nothing above expected must cost this flow, never leak
            # its socket and NAT entry.
            stats["tcp_internal_error"] += 1
            log.error("TCP %s -> %s:%d failed unexpectedly", source, dst, port, exc_info=exc)
            reason = "internal_error"
        engine._tcp_failed(self.conn, self.session, self.record, reason)

    def cancel(self) -> None:
        """End the flow while it is being set up: the app gets a reset."""
        engine = self.engine
        if self not in engine.setups:
            return
        engine.setups.discard(self)
        for pending in (self.timer, self.opening):
            if pending is not None:
                pending.cancel()
        self.timer = self.opening = None
        task, self.task = self.task, None
        if task is not None and not task.done():
            # The sniff watches the app's socket until its Task has run its cleanup: the
            # socket is closed only then. Closed under a registered reader, its number
            # would stay in the selector (a later socket given that number is never
            # watched) and the sniff's cleanup would fail on it.
            task.cancel()
            task.add_done_callback(self._closed_after_sniff)
            return
        engine._tcp_failed(self.conn, self.session, self.record, "closed")

    def _closed_after_sniff(self, _task: asyncio.Task[None]) -> None:
        self.engine._tcp_failed(self.conn, self.session, self.record, "closed")


class Engine:
    def __init__(
        self,
        device: Device,
        stack: SystemStack,
        router: Router,
        *,
        connect_timeout: float = 10.0,
        splice: bool = True,
        udp_gso: bool = True,
        dns: DnsHandler | None = None,
        redirect: bool = False,
        redirect_listeners: list[socket.socket] | None = None,
        tun_thread: bool = False,
        flows: FlowTable | None = None,
        max_udp_sessions: int = 0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
        kernel_nat: KernelNat | None = None,
    ) -> None:
        """`redirect_listeners`: bound by the caller (workers share one set); else bound
        in `start` when `redirect` is on. `tun_thread`: pump the TUN in a thread of its
        own instead of on the loop (see ztun.pump) -- always so for a device without a
        descriptor. `splice`, `udp_gso`: use these Linux fast paths where they exist
        (`ztun.platform.Accelerations`). `max_udp_sessions`: at most this many UDP flows
        hold an association (0: no limit); one more closes the least recently used.
        `fwmark`, `bind_interface`: for the ICMP sockets of `--icmp direct` (the
        outbounds carry their own). `kernel_nat`: the stack's NAT observer, if the kernel
        carries TCP (its counters join the snapshot)."""
        self.device = device
        self.kernel_nat = kernel_nat
        self.tun_thread = tun_thread or not has_descriptor(device)
        self.udp_gso = udp_gso
        self.stack = stack
        self.router = router
        self.connect_timeout = connect_timeout
        # With --redirect, nftables sends TCP bound for the TUN here instead (port 0: any).
        self.redirect_port: int | None = 0 if redirect else None
        self._redirect_listeners = redirect_listeners
        self.stats: Counter[str] = Counter()
        # Open flows for `ztun flows`/`status`/metrics: one record per flow, never per packet.
        self.flows = flows if flows is not None else FlowTable()
        self.relays: set[Relay] = set()
        # UDP flow policy (sans-IO): which association carries what, the open queue,
        # reply addresses. The engine runs what it decides.
        self.udp: UdpFlows[Outbound, Target] = UdpFlows(self.stats, max_flows=max_udp_sessions)
        self._udp_io: dict[UdpFlow[Outbound, Target], _UdpFlowIo] = {}
        self._told_udp_loop = False  # `_came_back` logs the first loop only
        # TCP flows between accept and their relay (`ztun stop` ends them too).
        self.setups: set[_TcpSetup] = set()
        self.listeners: list[socket.socket] = []
        # The stack is shared with the TUN pump (a thread with --tun-thread); every call
        # into it holds this (uncontended, and cheap, when the pump runs on the loop).
        self.lock = threading.Lock()
        self.pump: TunPump | None = None
        self.failed = False  # the data path died (device gone): exit non-zero
        self._relay_buffer = memoryview(bytearray(SHARED_BUFFER_SIZE))
        self.pipes = PipePool() if splice and HAVE_SPLICE else None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.icmp: IcmpForwarder | None = None
        if stack.icmp is IcmpMode.DIRECT:
            from .icmp_direct import IcmpForwarder

            self.icmp = IcmpForwarder(
                stack,
                self.write_packet,
                self.stats,
                self.lock,
                fwmark=fwmark,
                bind_interface=bind_interface,
                flows=self.flows,
            )
        self.dns: DnsService | None = None
        if dns is not None:
            from .dnsflow import DnsService

            self.dns = DnsService(dns, router.proxy_tcp, self._dns_reply, self.stats)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the hairpin listeners, then start reading the device."""
        for version, iface in ((4, self.stack.nat4), (6, self.stack.nat6)):
            if iface is None:
                continue
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((_ip_text(iface.server_addr), 0))
            sock.listen(4096)
            sock.setblocking(False)
            self.stack.set_listen_port(version, sock.getsockname()[1])
            self.loop.add_reader(sock.fileno(), self._on_accept, sock, version)
            self.listeners.append(sock)
        if self.redirect_port is not None:
            self._add_redirect_listeners(self._redirect_listeners or bind_redirect_listeners())
        self.pump = TunPump(
            self.device,
            self.stack,
            self.lock,
            self.loop,
            self._on_udp_batch,
            self.stats,
            self._on_pump_failed,
            on_backlog=self._on_tun_backlog,
        )
        if self.tun_thread:
            self.pump.start()
        else:
            self.pump.start_inline()
        self._arm_timer()

    def _add_redirect_listeners(self, listeners: list[socket.socket]) -> None:
        for sock in listeners:
            self.loop.add_reader(sock.fileno(), self._on_redirect_accept, sock)
            self.listeners.append(sock)
        self.redirect_port = listeners[0].getsockname()[1]

    def _on_pump_failed(self) -> None:
        self.failed = True
        self.stop()

    def listen_ports(self) -> dict[int, int]:
        ports = {}
        for version, nat in ((4, self.stack.nat4), (6, self.stack.nat6)):
            if nat is not None:
                ports[version] = nat.listen_port
        return ports

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def stop(self) -> None:
        """Close every flow (apps see RST), the listeners and the device."""
        if self._stopped.is_set():
            return
        if self.pump is not None:
            self.pump.stop()
        for sock in self.listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for relay in list(self.relays):
            relay.abort()
        self._run_udp(self.udp.close_all())
        for setup in list(self.setups):
            setup.cancel()
        if self.dns is not None:
            self.dns.close()
        if self.icmp is not None:
            self.icmp.close()
        if self._timer is not None:
            self._timer.cancel()
        if self.pipes is not None:
            self.pipes.close()
        self._stopped.set()

    def snapshot(self) -> dict[str, Any]:
        """Counters for logs and `ztun demo`: what flowed, and what was dropped and why."""
        stats = self.stats.copy()
        if self.pump is not None:
            stats.update(self.pump.uplink_stats.copy())  # what the pump sent itself
        return {
            "tcp_active": len(self.relays),
            "udp_sessions": len(self.udp),
            **dict(sorted(stats.items())),
            "stack": dict(sorted(self.stack.counters.items())),
            **({"kernel_nat": self.kernel_nat.snapshot()} if self.kernel_nat else {}),
        }

    def snapshot_json(self) -> str:
        return json.dumps(self.snapshot(), sort_keys=True)

    # -- device ----------------------------------------------------------------------------

    def write_packet(self, packet: bytearray | memoryview) -> None:
        """Write a packet ztun built; one larger than the TUN's MTU goes in fragments."""
        if len(packet) > self.stack.mtu:
            with self.lock:
                fragments = self.stack.fragment(packet)
            for fragment in fragments:
                self._write(fragment)
            return
        self._write(packet)

    def _write(self, packet: bytearray | memoryview) -> None:
        try:
            self.device.write(packet)
            self.stats["tun_packets_out"] += 1
        except BlockingIOError:
            self.stats["tun_write_dropped"] += 1
        except OSError as exc:
            self.stats["tun_write_error"] += 1
            log.debug("TUN write failed: %s", exc)

    # -- TCP -------------------------------------------------------------------------------

    def _on_accept(self, listener: socket.socket, version: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            with self.lock:
                session = self.stack.tcp_accepted(
                    version, socket.inet_pton(listener.family, peer[0].split("%")[0]), peer[1]
                )
            if session is None:
                close_with_reset(conn)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats["tcp_flows"] += 1
            self._on_hairpin_accept(conn, session)

    def _on_redirect_accept(self, listener: socket.socket) -> None:
        """A TCP connection nftables redirected to us: its destination is SO_ORIGINAL_DST."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            try:
                dst, port = original_destination(conn)
            except OSError as exc:
                log.warning("redirected connection without an original destination: %s", exc)
                close_with_reset(conn)
                continue
            if port == self.redirect_port and (dst.is_loopback or str(dst) == peer[0]):
                # Not redirected at all (its "original" destination is this listener):
                # relaying it would make ztun connect to itself, again and again.
                self.stats["tcp_loop_refused"] += 1
                close_with_reset(conn)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats["tcp_flows"] += 1
            self.stats["tcp_flows_redirected"] += 1
            _TcpSetup(self, conn, dst, port, (str(peer[0]), peer[1]), None).begin()

    def _on_hairpin_accept(self, conn: socket.socket, session: TcpSession) -> None:
        _TcpSetup(
            self,
            conn,
            _address(session.dst_addr)[0],
            session.dst_port,
            (_ip_text(session.client_addr), session.client_port),
            session,
        ).begin()

    def _relay_tcp(self, setup: _TcpSetup, stream: TcpStream) -> None:
        """The outbound is open: relay until both sides are done."""
        record, session, started = setup.record, setup.session, setup.started
        remote, early = stream.sock, stream.early  # non-blocking: make_socket's
        if stream.via is not None:  # a group's retry may have used another member
            record.outbound = stream.via

        def on_close(relay: Relay, exc: BaseException | None) -> None:
            self.relays.discard(relay)
            stream.release()  # the proxy's open-flow count (health, least-connections)
            self.stats["tcp_bytes_up"] += relay.bytes_up
            self.stats["tcp_bytes_down"] += relay.bytes_down
            if exc is not None:
                self.stats["tcp_relay_reset"] += 1
            self.flows.remove(record, self.loop.time(), "eof" if relay.ended_cleanly else "reset")
            self._session_done(session)

        relay = Relay(self.loop, setup.conn, remote, self._relay_buffer, on_close, self.pipes)
        self.relays.add(relay)
        self.flows.connected(record, relay, self.loop.time() - started)
        record.closer = relay.abort  # `ztun close`: a reset both ways
        try:
            relay.start(early)
        except Exception as exc:
            # A bug, or a socket that stopped being one, costs this flow only: both sides
            # are reset and on_close ends the flow and releases the proxy's count.
            self.stats["tcp_internal_error"] += 1
            log.error("TCP flow %s: the relay did not start", record.id, exc_info=exc)
            relay.abort(exc)

    def _answer_dns_over_tcp(self, setup: _TcpSetup, dns: DnsService) -> None:
        """Fake-ip: an app's DNS over TCP is answered by ztun, as its UDP queries are --
        the resolver it named, through the proxy, would give it real addresses."""
        record, session, conn = setup.record, setup.session, setup.conn

        def done(task: asyncio.Task[None]) -> None:
            exc = None if task.cancelled() else task.exception()
            if task.cancelled() or (exc is not None and not isinstance(exc, TimeoutError)):
                close_with_reset(conn)  # `ztun close`, a stop, or the app reset
                reason = "reset"
            else:
                conn.close()  # the app closed, or stayed idle (RFC 7766 6.2.3)
                reason = "eof"
            if exc is not None and not isinstance(exc, OSError | TimeoutError):
                log.error("DNS over TCP flow %s failed unexpectedly", record.id, exc_info=exc)
            self.flows.remove(record, self.loop.time(), reason)
            self._session_done(session)

        self.flows.routed(record, "dns")
        client, task = dns.serve_tcp(conn, (str(setup.dst), setup.port), done)
        self.flows.connected(record, client, self.loop.time() - setup.started)
        record.closer = task.cancel

    def outbound_name(self, decision: Decision, network: str) -> str:
        """What `ztun flows` and the metrics call the outbound a decision chose."""
        if decision.action is Action.REJECT:
            return "reject"
        return self.outbound_name_of(decision.outbound, network)

    def outbound_name_of(self, outbound: Outbound, network: str) -> str:
        """A proxy (of a group, the member it tries first), direct or reject (contracts 2
        and 3); the name the rules know it by for anything else."""
        pick = getattr(outbound, "member_for", None)
        name = pick(network) if pick is not None else None
        return name or self.router.name_of(outbound)

    def _tcp_failed(
        self, conn: socket.socket, session: TcpSession | None, record: FlowRecord, reason: str
    ) -> None:
        close_with_reset(conn)
        self.flows.remove(record, self.loop.time(), reason)
        self._session_done(session)

    def _session_done(self, session: TcpSession | None) -> None:
        if session is not None:
            with self.lock:
                self.stack.tcp_closed(session, self.loop.time())

    # -- UDP -------------------------------------------------------------------------------

    def _on_tun_backlog(self, backlogged: bool) -> None:
        if backlogged:
            self.stats["tun_backlogged"] += 1
        self._run_udp(self.udp.tun_backlogged(backlogged))

    def _on_udp_batch(self, events: list[UdpDatagram | IcmpEchoRequest]) -> None:
        for event in events:
            if type(event) is UdpDatagram:
                self._on_udp(event)
            elif type(event) is IcmpEchoRequest and self.icmp is not None:
                self.icmp.on_request(event, self.loop.time())

    def _on_udp(self, datagram: UdpDatagram) -> None:
        if self.dns is not None and datagram.dst_port == DNS_PORT:
            self.dns.on_query(datagram, self.loop.time())
            return
        if not self.stack.udp.holds(datagram.session):
            # Queued by the pump before the session expired: a flow opened for it now
            # would never see an expiry.
            self.stats["udp_stale_session"] += 1
            return
        route = self.udp.decided(datagram.dst_addr, datagram.dst_port)
        if route is None:
            route = self._udp_route(datagram)
            if route is None:
                return
        if route.outbound is self.router.reject:
            self.stats["udp_rejected"] += 1
            self.write_packet(self.stack.udp_unreachable(datagram))
            return
        # A second look-up of the flow per datagram, paid only while ztun has sockets of
        # its own that could come back (the usual proxied run has none).
        if (
            OWN_SOURCES
            and not self.udp.carries(datagram.session, route.outbound)
            and self._came_back(datagram)
        ):
            return
        self._run_udp(self.udp.datagram(datagram, route, self.loop.time()))

    def _came_back(self, datagram: UdpDatagram) -> bool:
        """Whether a datagram that would open a flow is from ztun's own direct UDP
        association, sent back into the TUN by the routes: it is dropped, or its new
        association would send it back again (~3700 sessions deep, each holding a socket
        until the UDP timeout). Counted each time, told once: the app's flow loops on."""
        session = datagram.session
        source = _ip_text(session.client_addr)
        if not is_own_source("udp", source, session.client_port):
            return False
        self.stats["udp_loop_refused"] += 1
        if not self._told_udp_loop:
            self._told_udp_loop = True
            log.error(
                "refused a routing loop: ztun's own UDP from %s:%d to %s:%d came back into "
                "the TUN %s; further ones are only counted (udp_loop_refused)",
                source,
                session.client_port,
                _ip_text(datagram.dst_addr),
                datagram.dst_port,
                _KEEP_OUT,
            )
        return True

    def _udp_route(self, datagram: UdpDatagram) -> UdpRoute[Outbound, Target] | None:
        """Ask the rules where a destination goes (the core remembers the answer)."""
        try:
            decision = self.router.decide(
                "udp", ipaddress.ip_address(datagram.dst_addr), datagram.dst_port
            )
        except LoopDetected as exc:
            self.stats["udp_loop_refused"] += 1
            log.error("refused a routing loop: %s", exc)
            return None
        except ValueError as exc:  # e.g. a fake-IP name no Target can carry
            self.stats["udp_rejected"] += 1
            log.warning(
                "UDP to %s:%d refused: %s", _ip_text(datagram.dst_addr), datagram.dst_port, exc
            )
            self.write_packet(self.stack.udp_unreachable(datagram))
            return None
        outbound = self.router.reject if decision.action is Action.REJECT else decision.outbound
        route = UdpRoute(outbound, decision.target, by_name=decision.domain is not None)
        self.udp.remember(datagram.dst_addr, datagram.dst_port, route)
        return route

    def _run_udp(self, events: list[UdpFlowEvent[Outbound, Target]]) -> None:
        """Carry out what the UDP core decided."""
        for event in events:
            if type(event) is SendDatagram:
                io = self._udp_io[event.flow]
                assert io.association is not None
                self.stats["udp_datagrams_up"] += 1
                self.stats["udp_bytes_up"] += len(event.payload)
                io.sent += len(event.payload)
                io.association.send(event.target, event.payload)
            elif type(event) is PumpRoute:
                self._add_pump_route(event)
            elif type(event) is OpenAssociation:
                io = _UdpFlowIo(self._udp_record(event.flow))
                self._udp_io[event.flow] = io
                io.task = self.loop.create_task(self._open_udp(event.flow, io))
            elif type(event) is CloseAssociation:
                self._close_udp(event)
            elif type(event) is Unreachable:
                self.write_packet(self.stack.udp_unreachable(event.datagram))

    async def _open_udp(self, flow: UdpFlow[Outbound, Target], io: _UdpFlowIo) -> None:
        try:
            association = await flow.outbound.open_udp(
                lambda source, payload: self._on_udp_reply(flow, io, source, payload)
            )
        except Rejected as exc:
            if isinstance(exc.__cause__, ProxyRefused):  # the proxy was asked and said no
                log.warning("UDP association for %s refused: %s", _source(flow), exc)
            self._run_udp(self.udp.open_failed(flow, rejected=True))
            return
        except (OutboundError, OSError) as exc:
            log.warning("UDP association for %s failed: %s", _source(flow), exc)
            self._run_udp(self.udp.open_failed(flow, rejected=False))
            return
        except Exception:
            # A bug must cost this flow only: its set-up slot goes back to the open queue.
            log.exception("UDP association for %s failed unexpectedly", _source(flow))
            self._run_udp(self.udp.open_failed(flow, rejected=False))
            return
        io.task = None
        if flow.state is FlowState.CLOSED:  # closed while it was being set up
            association.close()
            return
        io.association = association
        via = getattr(association, "via", None)
        if via is not None:  # a group's retry may have used another member
            io.record.outbound = via
        self.flows.connected(io.record, io)
        association.closed.add_done_callback(lambda _f: self._run_udp(self.udp.closed(flow)))
        make_uplink = getattr(association, "uplink", None)  # optional: SOCKS5 has one
        if make_uplink is not None and self.pump is not None:
            try:
                io.uplink = make_uplink(gso=self.udp_gso, shared=not self.tun_thread)
            except OSError as exc:  # e.g. EMFILE on the dup: the loop path still works
                self.stats["udp_uplink_unavailable"] += 1
                log.debug("UDP uplink for %s unavailable: %s", _source(flow), exc)
        self._run_udp(self.udp.opened(flow, pumpable=io.uplink is not None))

    def _add_pump_route(self, event: PumpRoute[Outbound, Target]) -> None:
        """Hand a destination to the pump: its next datagrams skip the loop."""
        io = self._udp_io.get(event.flow)
        pump = self.pump
        if pump is None or io is None or io.uplink is None:
            return
        uplink = io.uplink
        key = (event.flow.session, event.dst_addr, event.dst_port)
        pump.udp_routes.setdefault(key, (uplink, uplink.header_for(event.target)))

    def _close_udp(self, event: CloseAssociation[Outbound, Target]) -> None:
        """Take the flow's destinations back from the pump (then let it close the
        uplink), and close the association or stop setting it up."""
        io = self._udp_io.pop(event.flow, None)
        if io is None:
            return
        self.flows.remove(io.record, self.loop.time(), "ended")
        uplink, pump = io.uplink, self.pump
        if uplink is not None and pump is not None:
            routes = pump.udp_routes
            session = event.flow.session
            for dst_addr, dst_port in event.pump_routes:
                key = (session, dst_addr, dst_port)
                route = routes.get(key)
                if route is not None and route[0] is uplink:
                    del routes[key]
            pump.retire(uplink)
        if io.task is not None:
            io.task.cancel()
        if io.association is not None:
            io.association.close()

    def _udp_record(self, flow: UdpFlow[Outbound, Target]) -> FlowRecord:
        """The flow table's record of a new UDP flow: its session, and the destination of
        the datagram that opened it (a full-cone flow may send to others later)."""
        session = flow.session
        first = flow.queue[0] if flow.queue else None
        target: tuple[object, int] = ("-", 0)
        domain = None
        if first is not None:
            datagram, route = first
            target = (ipaddress.ip_address(datagram.dst_addr), datagram.dst_port)
            domain = route.target.host if route.by_name else None
        record = self.flows.add(
            "udp",
            (_ip_text(session.client_addr), session.client_port),
            target,
            self.loop.time(),
            domain=domain,
            closer=lambda: self.close_udp_flow(flow),
        )
        self.flows.routed(record, self.outbound_name_of(flow.outbound, "udp"))
        return record

    def _on_udp_reply(
        self, flow: UdpFlow[Outbound, Target], io: _UdpFlowIo, source: Target, payload: bytes
    ) -> None:
        source_addr = self.udp.reply_source(flow, source.host, source.port)
        if source_addr is None:
            return
        self.stats["udp_datagrams_down"] += 1
        self.stats["udp_bytes_down"] += len(payload)
        io.received += len(payload)
        with self.lock:
            packet = self.stack.udp_reply(
                flow.session, source_addr, source.port, payload, self.loop.time()
            )
        self.write_packet(packet)

    def udp_uplink(self, flow: UdpFlow[Outbound, Target]) -> Uplink | None:
        """The uplink the pump sends this flow's datagrams on (None: none, or closed)."""
        io = self._udp_io.get(flow)
        return io.uplink if io is not None else None

    def close_udp_flow(self, flow: UdpFlow[Outbound, Target]) -> None:
        """Close one UDP flow now (its session opens a new one on its next datagram)."""
        self._run_udp(self.udp.closed(flow))

    def routes_changed(self) -> None:
        """The rules or outbounds were swapped (a reload): new destinations are decided
        afresh. Open flows keep the outbound they hold, and the pump its routes to them."""
        self.udp.forget_decisions()

    def _dns_reply(self, query: UdpDatagram, payload: bytes) -> None:
        """Answer a DNS query as if the server the app asked had sent it."""
        with self.lock:
            packet = self.stack.udp_reply(
                query.session, query.dst_addr, query.dst_port, payload, self.loop.time()
            )
        self.write_packet(packet)

    # -- time ------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._timer = self.loop.call_later(1.0, self._on_timer)

    def _on_timer(self) -> None:
        try:
            self._expire()
        finally:
            self._arm_timer()  # an error in one expiry must not stop all the later ones

    def _expire(self) -> None:
        with self.lock:
            events = self.stack.on_timer(self.loop.time())
        for event in events:
            if isinstance(event, UdpSessionExpired):
                self._run_udp(self.udp.session_expired(event.session))
            elif isinstance(event, TcpSessionExpired):
                self.stats["tcp_nat_expired"] += 1
        if self.dns is not None:
            self.dns.on_timer(self.loop.time())
        if self.icmp is not None:
            self.icmp.expire(self.loop.time())
