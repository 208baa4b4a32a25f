"""The engine: one asyncio loop wiring the TUN device, the system stack and the outbounds.

It only moves bytes (aioquic's asyncio adapter is the model): read packets from the
device in batches into one reusable buffer, feed the sans-IO stack, write what it
returns; accept hairpinned TCP connections and relay them through an outbound; carry UDP
sessions over associations; re-arm one timer for the stack's expiries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import struct
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from .flows import FlowRecord, FlowTable, endpoint
from .outbound import (
    Outbound,
    OutboundError,
    Rejected,
    Target,
    UdpAssociation,
)
from .outbound.uplink import Uplink
from .pump import RouteKey, TunPump
from .relay import HAVE_SPLICE, SHARED_BUFFER_SIZE, PipePool, Relay, close_with_reset
from .router import Decision, LoopDetected, Router
from .rules import Action
from .stack import (
    SystemStack,
    TcpSession,
    TcpSessionExpired,
    UdpDatagram,
    UdpSession,
    UdpSessionExpired,
)
from .tun import Device
from .tun.base import has_descriptor

if TYPE_CHECKING:
    from .dns import DnsHandler
    from .dnsflow import DnsService

log = logging.getLogger("ztun")

ACCEPT_BATCH = 64
UDP_QUEUE_LIMIT = 64  # datagrams held while an association is being set up
DNS_PORT = 53
UDP_ROUTE_CACHE = 4096
UDP_PUMP_ROUTES = 65536  # destinations the pump sends to itself, over all flows
FlowKey = tuple[int, Action]


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


def _ip_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class _UdpFlow:
    """One app UDP session carried over one outbound association (opened lazily).

    A session whose datagrams the rules send two ways (proxy and direct) has one flow per
    outbound; `key` is (session id, action).
    """

    def __init__(
        self, engine: Engine, session: UdpSession, outbound: Outbound, key: FlowKey
    ) -> None:
        self.engine = engine
        self.session = session
        self.outbound = outbound
        self.key = key
        self.association: UdpAssociation | None = None
        # Once open, datagrams to a destination routed for good are sent by the pump.
        self.uplink: Uplink | None = None
        self.route_keys: list[RouteKey] = []
        self.queue: list[tuple[UdpDatagram, Target, bool]] = []
        # Replies to a datagram sent to a fake-IP domain must seem to come from the fake
        # address the app used: source port -> fake address.
        self.fake_sources: dict[int, bytes] = {}
        # Real addresses this flow sent to: a reply from one of them keeps its address
        # even when a fake-IP destination shares its port.
        self.real_destinations: set[str] = set()
        self.reply_addresses: dict[str, bytes] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        engine = self.engine
        try:
            association = await self.outbound.open_udp(self._on_reply)
        except Rejected:
            for datagram, _, _ in self.queue:
                engine.write_packet(engine.stack.udp_unreachable(datagram))
            self.queue.clear()
            self.close()
            return
        except (OutboundError, OSError) as exc:
            engine.stats["udp_open_failed"] += 1
            log.warning("UDP association for %s failed: %s", self._source(), exc)
            self.queue.clear()
            self.close()
            return
        if self.closed:
            association.close()
            return
        self.association = association
        association.closed.add_done_callback(lambda _f: self.close())
        make_uplink = getattr(association, "uplink", None)  # optional: SOCKS5 has one
        if make_uplink is not None and engine.pump is not None:
            try:
                self.uplink = make_uplink(gso=engine.udp_gso)
            except OSError as exc:  # e.g. EMFILE on the dup: the loop path still works
                engine.stats["udp_uplink_unavailable"] += 1
                log.debug("UDP uplink for %s unavailable: %s", self._source(), exc)
        for datagram, target, routed in self.queue:
            self._send(datagram, target, routed)
        self.queue.clear()

    def _source(self) -> str:
        return f"{_ip_text(self.session.client_addr)}:{self.session.client_port}"

    def send(self, datagram: UdpDatagram, target: Target, routed: bool = False) -> None:
        """`routed`: the engine's route for this destination is final (not a fake-IP name),
        so the pump may carry the destination's later datagrams itself."""
        if target.is_domain:
            self.fake_sources[target.port] = datagram.dst_addr
        elif len(self.real_destinations) < UDP_ROUTE_CACHE:
            self.real_destinations.add(target.host)
        if self.association is None:
            if len(self.queue) < UDP_QUEUE_LIMIT:
                self.queue.append((datagram, target, routed))
            else:
                self.engine.stats["udp_queue_overflow"] += 1
            return
        self._send(datagram, target, routed)

    def _send(self, datagram: UdpDatagram, target: Target, routed: bool) -> None:
        assert self.association is not None
        self.engine.stats["udp_datagrams_up"] += 1
        self.engine.stats["udp_bytes_up"] += len(datagram.payload)
        self.association.send(target, datagram.payload)
        if routed and self.uplink is not None:
            self._add_route(datagram, target)

    def _add_route(self, datagram: UdpDatagram, target: Target) -> None:
        """Hand this destination to the pump: its next datagrams skip the loop."""
        pump = self.engine.pump
        uplink = self.uplink
        if pump is None or uplink is None or self.closed:
            return
        routes = pump.udp_routes
        if len(self.route_keys) >= UDP_ROUTE_CACHE or len(routes) >= UDP_PUMP_ROUTES:
            return
        key = (self.session, datagram.dst_addr, datagram.dst_port)
        if key not in routes:
            routes[key] = (uplink, uplink.header_for(target))
            self.route_keys.append(key)

    def _drop_routes(self) -> None:
        """Take this flow's destinations back from the pump, then let it close the uplink."""
        uplink, pump = self.uplink, self.engine.pump
        if uplink is None or pump is None:
            return
        routes = pump.udp_routes
        for key in self.route_keys:
            route = routes.get(key)
            if route is not None and route[0] is uplink:
                del routes[key]
        self.route_keys.clear()
        self.uplink = None
        pump.retire(uplink)

    def _reply_address(self, host: str) -> bytes | None:
        """The packed source address, in the session's family, for a reply from `host`."""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            self.engine.stats["udp_reply_from_domain"] += 1
            return None
        if self.session.version == 4 and addr.version == 6:
            mapped = addr.ipv4_mapped
            if mapped is None:
                self.engine.stats["udp_reply_family_mismatch"] += 1
                return None
            addr = mapped
        elif self.session.version == 6 and addr.version == 4:
            addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
        return addr.packed

    def _on_reply(self, source: Target, payload: bytes) -> None:
        engine = self.engine
        packed = self.reply_addresses.get(source.host)
        if packed is None:
            packed = self._reply_address(source.host)
            if packed is None:
                return
            if len(self.reply_addresses) < UDP_ROUTE_CACHE:
                self.reply_addresses[source.host] = packed
        source_addr = packed
        if source.host not in self.real_destinations:
            source_addr = self.fake_sources.get(source.port, packed)
        if len(source_addr) != len(self.session.client_addr):
            source_addr = packed
        engine.stats["udp_datagrams_down"] += 1
        engine.stats["udp_bytes_down"] += len(payload)
        with engine.lock:
            packet = engine.stack.udp_reply(
                self.session, source_addr, source.port, payload, engine.loop.time()
            )
        engine.write_packet(packet)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._drop_routes()
        if self.association is not None:
            self.association.close()
        self.engine.udp_flow_closed(self)


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
    ) -> None:
        """`redirect_listeners`: bound by the caller (workers share one set); else bound
        in `start` when `redirect` is on. `tun_thread`: pump the TUN in a thread of its
        own instead of on the loop (see ztun.pump) -- always so for a device without a
        descriptor. `splice`, `udp_gso`: use these Linux fast paths where they exist
        (`ztun.platform.Accelerations`)."""
        self.device = device
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
        self.udp_flows: dict[FlowKey, _UdpFlow] = {}
        # Routing a datagram is per destination, and rules do not change while running:
        # decide once per (address, port), not per datagram.
        self._udp_routes: dict[tuple[bytes, int], Decision] = {}
        self.pending: set[asyncio.Task[None]] = set()
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
        for flow in list(self.udp_flows.values()):
            flow.close()
        for task in list(self.pending):
            task.cancel()
        if self.dns is not None:
            self.dns.close()
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
            "udp_sessions": len(self.udp_flows),
            **dict(sorted(stats.items())),
            "stack": dict(sorted(self.stack.counters.items())),
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

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

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
            self._spawn(self._serve_tcp(conn, dst, port, (str(peer[0]), peer[1]), None))

    def _on_hairpin_accept(self, conn: socket.socket, session: TcpSession) -> None:
        self._spawn(
            self._serve_tcp(
                conn,
                ipaddress.ip_address(session.dst_addr),
                session.dst_port,
                (_ip_text(session.client_addr), session.client_port),
                session,
            )
        )

    async def _serve_tcp(
        self,
        conn: socket.socket,
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        client: tuple[str, int],
        session: TcpSession | None,
    ) -> None:
        """Route one app connection, open its outbound, relay until both sides are done."""
        source = client[0]
        # Accepted a hairpin's (or redirect's) handshake ago: microseconds after the SYN.
        started = self.loop.time()
        task = asyncio.current_task()
        record = self.flows.add(
            "tcp",
            endpoint(*client),
            endpoint(str(dst), port),
            started,
            closer=task.cancel if task is not None else None,
        )
        try:
            domain = await self.router.sniff(conn)
            decision = self.router.decide("tcp", dst, port, domain)
            self.flows.routed(record, self.outbound_name(decision, "tcp"), decision.domain)
            if decision.action is Action.REJECT:
                raise Rejected(f"rule rejects {decision.target}")
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the coroutine in a
            # Task of its own, one more loop round trip per new connection.
            async with asyncio.timeout(self.connect_timeout):
                stream = await decision.outbound.open_tcp(decision.target)
        except LoopDetected as exc:
            self.stats["tcp_loop_refused"] += 1
            log.error("refused a routing loop: %s", exc)
            self._tcp_failed(conn, session, record, "loop")
            return
        except Rejected:
            self.stats["tcp_rejected"] += 1
            self._tcp_failed(conn, session, record, "rejected")
            return
        except (OutboundError, OSError, TimeoutError) as exc:
            self.stats["tcp_outbound_failed"] += 1
            log.warning("TCP %s -> %s:%d: %s", source, dst, port, exc or type(exc).__name__)
            self._tcp_failed(conn, session, record, "outbound_failed")
            return
        except asyncio.CancelledError:
            self._tcp_failed(conn, session, record, "closed")
            raise
        except Exception:
            # A bug or an input nothing above expected must cost this flow, never leak
            # its socket and NAT entry.
            self.stats["tcp_internal_error"] += 1
            log.exception("TCP %s -> %s:%d failed unexpectedly", source, dst, port)
            self._tcp_failed(conn, session, record, "internal_error")
            return
        remote, early = stream.sock, stream.early  # non-blocking: make_socket's

        def on_close(relay: Relay, exc: BaseException | None) -> None:
            self.relays.discard(relay)
            self.stats["tcp_bytes_up"] += relay.bytes_up
            self.stats["tcp_bytes_down"] += relay.bytes_down
            if exc is not None:
                self.stats["tcp_relay_reset"] += 1
            self.flows.remove(record, self.loop.time(), "eof" if relay.ended_cleanly else "reset")
            self._session_done(session)

        relay = Relay(self.loop, conn, remote, self._relay_buffer, on_close, self.pipes)
        self.relays.add(relay)
        self.flows.connected(record, relay, self.loop.time() - started)
        record.closer = relay.abort  # `ztun close`: a reset both ways
        relay.start(early)

    def outbound_name(self, decision: Decision, network: str) -> str:
        """What `ztun flows` and the metrics call the outbound a decision chose."""
        name = getattr(decision.outbound, "name", None)
        if isinstance(name, str) and name:
            return name
        if decision.action is Action.DIRECT:
            return "direct"
        if decision.action is Action.REJECT:
            return "reject"
        # contracts 2: --proxy URLs are proxy1, proxy2, ...; --udp-proxy is "udp".
        udp_apart = network == "udp" and self.router.proxy_udp is not self.router.proxy_tcp
        return "udp" if udp_apart else "proxy1"

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

    def _on_udp_batch(self, datagrams: list[UdpDatagram]) -> None:
        for datagram in datagrams:
            self._on_udp(datagram)

    def _on_udp(self, datagram: UdpDatagram) -> None:
        if self.dns is not None and datagram.dst_port == DNS_PORT:
            self.dns.on_query(datagram, self.loop.time())
            return
        session = datagram.session
        if not self.stack.udp.holds(session):
            # Queued by the pump before the session expired: a flow opened for it now
            # would never see an expiry.
            self.stats["udp_stale_session"] += 1
            return
        route_key = (datagram.dst_addr, datagram.dst_port)
        decision = self._udp_routes.get(route_key)
        if decision is None:
            try:
                decision = self.router.decide(
                    "udp", ipaddress.ip_address(datagram.dst_addr), datagram.dst_port
                )
            except LoopDetected as exc:
                self.stats["udp_loop_refused"] += 1
                log.error("refused a routing loop: %s", exc)
                return
            except ValueError as exc:  # e.g. a fake-IP name no Target can carry
                self.stats["udp_rejected"] += 1
                log.warning(
                    "UDP to %s:%d refused: %s", _ip_text(datagram.dst_addr), datagram.dst_port, exc
                )
                self.write_packet(self.stack.udp_unreachable(datagram))
                return
            if decision.domain is None:  # fake-IP names are re-read (the pool recycles)
                if len(self._udp_routes) >= UDP_ROUTE_CACHE:
                    self._udp_routes.clear()
                self._udp_routes[route_key] = decision
        if decision.action is Action.REJECT:
            self.stats["udp_rejected"] += 1
            self.write_packet(self.stack.udp_unreachable(datagram))
            return
        key = (id(session), decision.action)
        flow = self.udp_flows.get(key)
        if flow is None:
            flow = _UdpFlow(self, session, decision.outbound, key)
            self.udp_flows[key] = flow
            self.stats["udp_sessions_total"] += 1
        flow.send(datagram, decision.target, decision.domain is None)

    def routes_changed(self) -> None:
        """The rules or outbounds were swapped (a reload): new destinations are decided
        afresh. Open flows keep the outbound they hold, and the pump its routes to them."""
        self._udp_routes.clear()

    def _dns_reply(self, query: UdpDatagram, payload: bytes) -> None:
        """Answer a DNS query as if the server the app asked had sent it."""
        with self.lock:
            packet = self.stack.udp_reply(
                query.session, query.dst_addr, query.dst_port, payload, self.loop.time()
            )
        self.write_packet(packet)

    def udp_flow_closed(self, flow: _UdpFlow) -> None:
        # The stack's session stays until its idle expiry: a later datagram simply opens
        # a new association for it.
        if self.udp_flows.get(flow.key) is flow:
            del self.udp_flows[flow.key]

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
                for action in Action:
                    flow = self.udp_flows.get((id(event.session), action))
                    if flow is not None:
                        flow.close()
            elif isinstance(event, TcpSessionExpired):
                self.stats["tcp_nat_expired"] += 1
        if self.dns is not None:
            self.dns.on_timer(self.loop.time())
