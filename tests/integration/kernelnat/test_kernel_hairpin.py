"""The kernel NAT on a real TUN: flows carried by the kernel, ztun's stack seeing SYNs.

Two namespaces: `app` (an app in another network, routed through `gw`) and `gw` (the
TUN, ztun's stack, the hairpin listener; an app of its own too). The stack runs here
in-process -- a reader thread doing what ztun's TUN pump does (read a frame, run it
through `SystemStack.receive`, write back what it returns) and a listener that echoes
whatever an accepted flow sends -- with `KernelNat` following the stack. No proxy: the
listener is the far end, so every byte the app gets back went through both rewrites.

The app-gw link has its checksum and segmentation offloads off (both ends), so each
namespace's kernel computes and verifies TCP checksums in software: a rewrite that left
a wrong checksum -- a full one on the app's segments, the CHECKSUM_PARTIAL seed of the
listener's GSO super-packets, which the forwarding path finishes when it segments them
-- loses the segment, and the transfer stalls. A gw-local app's flows are delivered
locally, where the kernel trusts CHECKSUM_PARTIAL; they show the GSO path's speed side.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from harness.hosts.netns import NetnsHost
from harness.topo import HostSpec, LinkSpec, Topology, TopologySpec
from ztun.kernelnat import Counters, KernelNat
from ztun.kernelnat.attach import egress_programs
from ztun.stack import SystemStack, TcpSession
from ztun.tun.linux import LinuxTun
from ztun.wire import Ipv6Packet, WireError, parse_ip

pytestmark = [pytest.mark.netns, pytest.mark.linux]

DEVICE = "kn0"
TUN4 = ipaddress.IPv4Interface("198.18.0.1/30")
TUN6 = ipaddress.IPv6Interface("fd00:5a:7e::1/126")
FAR4 = "10.99.0.5"  # destinations routed into the TUN
FAR6 = "2001:db8:99::5"
FAR_PORT = 443
LINK4, LINK6 = "10.210.1.0/24", "fd00:210:1::/64"
TRANSFER = 4 << 20  # bytes each way: many GSO super-packets
IO_TIMEOUT = 30.0
SYN, ACK = 0x02, 0x10


@dataclass
class Seen:
    """TCP frames the stack got from the TUN, by (source port, destination port)."""

    flags: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    payloads: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def add(self, frame: memoryview) -> None:
        try:
            ip = parse_ip(frame)
            if isinstance(ip, Ipv6Packet):
                proto, l4 = ip.upper_layer()
            else:
                proto, l4 = ip.protocol, (frame[0] & 0x0F) * 4
        except WireError:
            return
        if proto != socket.IPPROTO_TCP or len(frame) < l4 + 14:
            return
        sport, dport = struct.unpack_from("!HH", frame, l4)
        with self.lock:
            self.flags.setdefault((sport, dport), []).append(frame[l4 + 13])
            payload = len(frame) - l4 - (frame[l4 + 12] >> 4) * 4
            self.payloads.setdefault((sport, dport), []).append(payload)

    def of(self, sport: int, dport: int) -> list[int]:
        with self.lock:
            return list(self.flags.get((sport, dport), []))

    def with_payload(self, sport: int, dport: int) -> int:
        """How many of the frames seen carried TCP payload."""
        with self.lock:
            return sum(1 for n in self.payloads.get((sport, dport), []) if n > 0)


class MiniZtun:
    """ztun's data path in-process: the stack on the TUN, the hairpin listener echoing."""

    def __init__(self, gw: NetnsHost, tun: LinuxTun) -> None:
        self.tun = tun
        self.stack = SystemStack(inet4=TUN4, inet6=TUN6)
        self.lock = threading.Lock()
        self.seen = Seen()
        self.sessions: dict[tuple[int, int], TcpSession] = {}  # (version, nat_port)
        self.accepted = threading.Condition()
        self.kernel_nat: KernelNat | None = None
        self._stop_r, self._stop_w = os.pipe()
        self.listeners = []
        for family, iface in ((socket.AF_INET, TUN4), (socket.AF_INET6, TUN6)):
            sock = gw.socket(family, socket.SOCK_STREAM)
            sock.bind((str(iface.ip), 0))
            sock.listen(64)
            self.stack.set_listen_port(iface.version, sock.getsockname()[1])
            self.listeners.append(sock)
        self.threads = [threading.Thread(target=self._read, daemon=True)]
        self.threads += [
            threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self.listeners
        ]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        rx = memoryview(bytearray(65536 + 64))
        hdr = self.tun.frame_header_len
        poller = select.poll()
        poller.register(self.tun.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self._stop_r:
                    return
            while True:
                try:
                    n = self.tun.read_into(rx)
                except BlockingIOError:
                    break
                self.seen.add(rx[hdr:n])
                with self.lock:
                    out = self.stack.receive(rx[hdr:n], time.monotonic(), hdr > 0 and rx[0] & 1)
                if isinstance(out, memoryview):
                    self.tun.write_frame(rx[:n])
                elif isinstance(out, bytearray):
                    self.tun.write(out)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            version = 6 if listener.family == socket.AF_INET6 else 4
            with self.lock:
                session = self.stack.tcp_accepted(
                    version, ipaddress.ip_address(peer[0]).packed, peer[1]
                )
            assert session is not None, peer
            with self.accepted:
                self.sessions[(version, session.nat_port)] = session
                self.accepted.notify_all()
            threading.Thread(target=self._echo, args=(conn, session), daemon=True).start()

    def _echo(self, conn: socket.socket, session: TcpSession) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                while data := conn.recv(1 << 16):
                    if data == b"RST!":  # the app asks for a reset instead of an echo
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        return
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                with self.lock:
                    self.stack.tcp_closed(session, time.monotonic())

    def session_for(self, app: socket.socket) -> TcpSession:
        """The NAT session of the app's connection (once the listener accepted it)."""
        name = app.getsockname()
        version = 6 if app.family == socket.AF_INET6 else 4
        want = (ipaddress.ip_address(name[0]).packed, name[1])

        def find() -> TcpSession | None:
            return next(
                (
                    s
                    for (v, _), s in self.sessions.items()
                    if v == version and (s.client_addr, s.client_port) == want
                ),
                None,
            )

        with self.accepted:
            self.accepted.wait_for(lambda: find() is not None, timeout=IO_TIMEOUT)
            session = find()
        assert session is not None, f"no session for {name}"
        return session

    def start_kernel_nat(self) -> KernelNat:
        kernel_nat = KernelNat.start(self.tun.index, netns=self.tun.netns)
        with self.lock:
            kernel_nat.follow(self.stack)
        self.kernel_nat = kernel_nat
        return kernel_nat

    def stop_kernel_nat(self) -> None:
        if self.kernel_nat is not None:
            with self.lock:
                self.stack.nat_observer = None
            self.kernel_nat.stop()
            self.kernel_nat = None

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)
        self.stop_kernel_nat()
        os.close(self._stop_r)
        os.close(self._stop_w)


@dataclass
class Net:
    topo: Topology
    ztun: MiniZtun

    @property
    def app(self) -> NetnsHost:
        return self.topo.host("app")

    @property
    def gw(self) -> NetnsHost:
        return self.topo.host("gw")

    def connect(self, where: str, version: int) -> socket.socket:
        host = self.app if where == "app" else self.gw
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        sock = host.socket(family, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        sock.connect((FAR6 if version == 6 else FAR4, FAR_PORT))
        return sock


@pytest.fixture(params=[True, False], ids=["offload", "no-offload"])
def net(request: pytest.FixtureRequest, topology_factory: Callable[..., Topology]) -> Iterator[Net]:
    topo = topology_factory(
        TopologySpec.of(
            hosts=[HostSpec("app"), HostSpec("gw", forwarding=True)],
            links=[LinkSpec("app", "gw", ipv4=LINK4, ipv6=LINK6)],
        )
    )
    app, gw = topo.host("app"), topo.host("gw")
    for name, peer in (("app", "gw"), ("gw", "app")):
        topo.host(name).disable_offloads(topo.iface(name, peer))
    app.add_route("default", via=str(topo.address("gw", "app", 4)))
    app.add_route("::/0", via=str(topo.address("gw", "app", 6)))
    tun = LinuxTun(
        DEVICE, addresses=[TUN4, TUN6], netns=gw.name, offload=bool(request.param), mtu=1500
    )
    gw.add_route(f"{FAR4}/32", dev=DEVICE)
    gw.add_route(f"{FAR6}/128", dev=DEVICE)
    ztun = MiniZtun(gw, tun)
    try:
        yield Net(topo, ztun)
    finally:
        ztun.close()
        tun.close()


def _exchange(sock: socket.socket, size: int, chunk: int = 1 << 16) -> None:
    """Send `size` bytes of a pattern while reading the echo; the echo must match."""
    pattern = bytes(range(251)) * (chunk // 251 + 2)
    sent = received = 0
    sock.setblocking(False)
    deadline = time.monotonic() + IO_TIMEOUT
    while received < size:
        assert time.monotonic() < deadline, f"echo stalled at {received} of {size} bytes"
        want_write = [sock] if sent < size else []
        readable, writable, _ = select.select([sock], want_write, [], 1.0)
        if writable:
            offset = sent % 251
            sent += sock.send(pattern[offset : offset + min(chunk, size - sent)])
        if readable:
            data = sock.recv(chunk)
            assert data, f"EOF after {received} bytes"
            offset = received % 251
            assert data == pattern[offset : offset + len(data)], f"corrupt at {received}"
            received += len(data)
    sock.setblocking(True)
    sock.settimeout(IO_TIMEOUT)


def _ports(sock: socket.socket) -> tuple[int, int]:
    return sock.getsockname()[1], sock.getpeername()[1]


@pytest.mark.parametrize("where", ["app", "gw"])
@pytest.mark.parametrize("version", [4, 6])
def test_flows_stay_in_the_kernel(net: Net, where: str, version: int) -> None:
    """After the SYN the stack sees nothing of the flow; the echo is whole and right, the
    close is clean, and the entry's counters hold what crossed."""
    kernel_nat = net.ztun.start_kernel_nat()
    assert egress_programs(net.ztun.tun.index, netns=net.gw.name) == ["ztun_nat"]
    sock = net.connect(where, version)
    ports = _ports(sock)
    _exchange(sock, TRANSFER)
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b""  # the listener's FIN came back through the kernel
    session = net.ztun.session_for(sock)
    up, down = kernel_nat.carried(session)
    sock.close()
    assert net.ztun.seen.of(*ports) == [SYN]
    assert up.payload >= TRANSFER and down.payload >= TRANSFER
    assert up.packets > 0 and down.packets > 0


@pytest.mark.parametrize("version", [4, 6])
def test_reset_goes_through_the_kernel(net: Net, version: int) -> None:
    net.ztun.start_kernel_nat()
    sock = net.connect("app", version)
    ports = _ports(sock)
    _exchange(sock, 1000)
    sock.sendall(b"RST!")
    with pytest.raises(ConnectionResetError):
        while sock.recv(1 << 16):
            pass
    assert net.ztun.seen.of(*ports) == [SYN]
    sock.close()


def test_flows_move_between_the_paths(net: Net) -> None:
    """A flow opened before the program is attached moves to the kernel when it is (the
    stack's entries are mirrored), and back to the stack when it is taken off.

    Counted by segments with payload, both directions: pure ACKs the app sent before
    the attach may still be queued on the TUN when it happens (the app needs none of
    them to have its echo). So may a retransmission or two (a tail-loss probe fired
    while the stack was slow), but not the megabyte sent after it."""
    socks = [net.connect("app", 4), net.connect("gw", 6)]
    flows = []
    for sock in socks:
        app_ports = _ports(sock)
        _exchange(sock, 1 << 20)
        session = net.ztun.session_for(sock)
        answers = net.ztun.stack.nat4 if sock.family == socket.AF_INET else net.ztun.stack.nat6
        assert answers is not None
        flows.append((app_ports, (answers.listen_port, session.nat_port), session))

    def data_seen() -> list[int]:
        return [
            net.ztun.seen.with_payload(*a) + net.ztun.seen.with_payload(*b) for a, b, _ in flows
        ]

    before = data_seen()
    assert all(n > 10 for n in before)  # the stack carried them
    kernel_nat = net.ztun.start_kernel_nat()
    for sock in socks:
        _exchange(sock, 1 << 20)
    during = data_seen()
    assert all(d - b <= 2 for b, d in zip(before, during, strict=True)), (before, during)
    for _, _, session in flows:
        up, down = kernel_nat.carried(session)
        assert up.payload >= 1 << 20 and down.payload >= 1 << 20
    net.ztun.stop_kernel_nat()
    assert egress_programs(net.ztun.tun.index, netns=net.gw.name) == []
    for sock in socks:
        _exchange(sock, 1 << 20)
        sock.close()
    assert all(a - d > 10 for d, a in zip(during, data_seen(), strict=True))


IP_OPTIONS = 4  # <linux/in.h>
IPV6_DSTOPTS = 59  # <linux/in6.h>: a sticky destination options header


@pytest.mark.parametrize("version", [4, 6])
def test_options_and_extension_headers_go_to_the_stack(net: Net, version: int) -> None:
    """The app's segments carry IPv4 options / an IPv6 destination options header: the
    program leaves them to the stack, which rewrites them; the listener's answers
    (plain headers) still go through the kernel. The echo is right both ways."""
    kernel_nat = net.ztun.start_kernel_nat()
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    sock = net.app.socket(family, socket.SOCK_STREAM)
    if version == 4:
        sock.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, b"\x01\x01\x01\x00")  # NOPs, EOL
    else:
        pad_n = b"\x01\x04\x00\x00\x00\x00"  # PadN over the 6 bytes after the 2-byte header
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, b"\x00\x00" + pad_n)
    sock.settimeout(IO_TIMEOUT)
    sock.connect((FAR6 if version == 6 else FAR4, FAR_PORT))
    ports = _ports(sock)
    _exchange(sock, 1 << 20)
    session = net.ztun.session_for(sock)
    sock.close()
    seen = net.ztun.seen.of(*ports)
    assert seen[0] == SYN and len(seen) > 10  # the app's segments came to the stack
    up, down = kernel_nat.carried(session)
    assert up == Counters(0, 0) and down.payload >= 1 << 20  # answers: the kernel


def test_without_the_program_the_stack_carries_everything(net: Net) -> None:
    """The setup itself: with no program attached every segment of the flow reaches the
    stack and is rewritten there, and the same echo works."""
    sock = net.connect("app", 4)
    _exchange(sock, 1 << 16)
    seen = net.ztun.seen.of(*_ports(sock))
    sock.close()
    assert seen[0] == SYN and len(seen) > 4 and all(f & ACK for f in seen[1:])
