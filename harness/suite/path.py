"""The path every conformance test drives: app -> TUN -> tun2socks -> SOCKS5 -> target.

Helpers here are the "app": plain sockets opened inside the client host, which the
kernel routes into the TUN of the implementation under test. Where the parts live is the
:class:`Testbed`, one per topology (``--topology``):

* ``netns`` (default on Linux): three namespaces, client -- proxy -- server. The proxy
  host does not forward, so a byte that reaches the server was carried by the
  implementation and the SOCKS5 server, nothing else; everything is routed into the TUN.
* ``single``: one host holds the app, the implementation, the SOCKS5 server and the
  targets. The app dials targets in the documentation ranges (RFC 5737 192.0.2.0/24 and
  198.51.100.0/24, RFC 3849 2001:db8::/32), which exist nowhere; only those prefixes are
  routed into the TUN, and the recording SOCKS5 server maps 192.0.2.0/24 and
  2001:db8::/64 to the targets on loopback (the rest stays unreachable). A host without
  namespaces (macOS, Windows, a VM, a container) runs the same behaviours this way; on
  Linux the host is a namespace of its own, never the root namespace.

Which SOCKS5 server a behaviour uses, and why, is said once here:

* ``danted`` -- a real, fast server with half-close; used for TCP behaviours. In the
  single topology it cannot reach the documentation addresses, so the recording server
  stands in (same half-close and relaying; the danted interoperability row skips).
* ``recording`` -- the harness's own server: it logs what it relayed (the evidence for a
  round trip, for "not relayed" checks), turns a target's RST into an RST towards the
  client (danted answers a reset with a FIN, so a tun2socks behind it cannot know), and
  accepts UDP from the control connection's address whatever client address the
  UDP ASSOCIATE declared -- so UDP rows measure the tun2socks, not one server's policy.
  The declared address is checked by its own row.

Time bounds are scaled by ``--time-scale`` (a TCG guest runs every packet through an
emulator: ``scaled(PROMPT)`` there is PROMPT times the factor).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import pytest

from harness.hosts import Host
from harness.impls import RunningImpl
from harness.peers.starters import Socks5Server
from harness.peers.targets import seeded_chunks
from harness.timescale import scaled

DEVICE = "ctun0"
SOCKS_PORT = 1080
DATA_PORT, ECHO_PORT, UDP_ECHO_PORT = 5001, 5002, 5003
SCRIPTED_PORT = 5004
"""Where a test's own one-shot server listens (half-close, reset)."""
CLOSED_PORT = 5009
"""Nothing ever listens here: connecting must be refused."""
CLOSED_PROXY_PORT = 1089
"""Nothing listens here on the proxy host: a proxy URL that cannot be reached."""

MIB = 1 << 20
RECV_CHUNK = 1 << 20
IO_TIMEOUT = 30.0
"""Seconds any single socket operation of the app may block: a hang fails, never stalls."""
BULK_TIMEOUT = 120.0
PROMPT = 5.0
"""Seconds within which an app must learn that its connection was refused or reset
(a timeout-driven answer takes the proxy's connect timeout, 10 s or more)."""
SERVER_JOIN = 30.0

SINGLE_V4_TARGET, SINGLE_V6_TARGET = "192.0.2.10", "2001:db8::10"
"""Where the app sends in the single topology (RFC 5737 TEST-NET-1, RFC 3849)."""
SINGLE_ROUTES = ("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32")
"""All the single topology routes into the TUN: nothing else of the host changes path."""
SINGLE_MAP = ("192.0.2.0/24=127.0.0.1", "2001:db8::/64=::1")
"""The recording server's address map there: documentation targets -> loopback targets."""
NOWHERE_V4, NOWHERE_V6 = "198.51.100.99", "2001:db8:ffff::99"
"""Addresses that answer nothing in either topology (no host has them, no map names them)."""

ProxyKind = Literal["danted", "recording"]
TargetKind = Literal["echo", "data", "udp"]
TopologyKind = Literal["netns", "single"]


@dataclass(frozen=True)
class Testbed:
    """Where the parts of a behaviour run, and the addresses that connect them."""

    __test__ = False  # a name starting with "Test", not a test class

    kind: TopologyKind
    client: Host
    """Runs the app and the implementation under test."""
    proxy_host: Host
    server: Host
    proxy_listen: str
    """The SOCKS5 server's (IPv4) address: the implementation reaches it outside the TUN."""
    server_v4: str
    server_v6: str
    """What the app dials."""
    listen_v4: str
    listen_v6: str
    """Where targets bind (the same addresses in netns; loopback in single)."""
    routes: tuple[str, ...]
    """What is routed into the TUN."""
    uplink: str | None
    """The client's interface towards the proxy (None: only loopback carries it)."""
    address_map: tuple[str, ...] = ()
    """The recording server's ``--map`` specs."""

    def require_netns(self, why: str) -> None:
        """Skip a behaviour that needs separate hosts, saying why."""
        if self.kind != "netns":
            pytest.skip(f"{self.kind} topology: {why}")


@dataclass
class Path:
    """The testbed with targets, a SOCKS5 server and the implementation running."""

    bed: Testbed
    proxy: Socks5Server
    impl: RunningImpl

    @property
    def client(self) -> Host:
        return self.bed.client

    @property
    def server(self) -> Host:
        return self.bed.server

    @property
    def server_v4(self) -> str:
        return self.bed.server_v4

    @property
    def server_v6(self) -> str:
        return self.bed.server_v6

    def server_ip(self, v6: bool = False) -> str:
        """The target address the app dials."""
        return self.bed.server_v6 if v6 else self.bed.server_v4

    def listen_ip(self, v6: bool = False) -> str:
        """The address a target binds to, in the server host."""
        return self.bed.listen_v6 if v6 else self.bed.listen_v4

    def tun_address(self, version: int) -> str:
        """The implementation's own TUN address of that family (the app's source)."""
        for cidr in self.impl.addresses:
            iface = ipaddress.ip_interface(cidr)
            if iface.version == version:
                return str(iface.ip)
        raise LookupError(f"no IPv{version} address on {self.impl.device}: {self.impl.addresses}")

    def connect(
        self, port: int, *, v6: bool = False, timeout: float = IO_TIMEOUT, host: str | None = None
    ) -> socket.socket:
        """A TCP connection opened by an app in the client (routed into the TUN)."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self.client.socket(family, socket.SOCK_STREAM)
        sock.settimeout(scaled(timeout))
        try:
            sock.connect((host or self.server_ip(v6), port))
        except BaseException:
            sock.close()
            raise
        return sock

    def udp(self, *, v6: bool = False, timeout: float = PROMPT) -> socket.socket:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self.client.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(scaled(timeout))
        return sock


StartPath = Callable[..., Path]


# --------------------------------------------------------------------------- app helpers


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF (bounded by the socket's timeout per read)."""
    chunks = []
    while data := sock.recv(RECV_CHUNK):
        chunks.append(data)
    return b"".join(chunks)


def echo(path: Path, payload: bytes, *, v6: bool = False) -> bytes:
    """Send ``payload`` to the TCP echo, half-close, and return what came back."""
    with path.connect(ECHO_PORT, v6=v6) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def upload(path: Path, size: int, seed: int, *, v6: bool = False) -> tuple[int, str]:
    """SINK: send ``size`` seeded bytes, half-close; the server answers count and sha256."""
    with path.connect(DATA_PORT, v6=v6, timeout=BULK_TIMEOUT) as sock:
        sock.sendall(b"SINK\n")
        for chunk in seeded_chunks(seed, size):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        line = recv_all(sock).decode("ascii", errors="replace")
    count, sha = line.split()
    return int(count), sha


def download(path: Path, size: int, seed: int, *, v6: bool = False) -> tuple[int, str]:
    """SOURCE: the server sends ``size`` seeded bytes; returns count and sha256 received."""
    digest = hashlib.sha256()
    count = 0
    with path.connect(DATA_PORT, v6=v6, timeout=BULK_TIMEOUT) as sock:
        sock.sendall(f"SOURCE {size} {seed}\n".encode())
        while data := sock.recv(RECV_CHUNK):
            digest.update(data)
            count += len(data)
    return count, digest.hexdigest()


def udp_echo(path: Path, payload: bytes, *, v6: bool = False) -> tuple[bytes, tuple[str, int]]:
    """One datagram to the UDP echo; the answer and the address it came from."""
    with path.udp(v6=v6) as sock:
        sock.sendto(payload, (path.server_ip(v6), UDP_ECHO_PORT))
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            raise AssertionError(
                f"no UDP echo of a {len(payload)} B datagram within "
                f"{sock.gettimeout():g}s (lost on the way: see the "
                "proxy's log)"
            ) from None
    return data, (source[0], source[1])


# --------------------------------------------------------------------------- scripted server


@dataclass
class ScriptedServer:
    """A one-connection server in the server host, scripted by the test.

    The socket is created inside the server's namespace (``Host.socket``) and served from
    a thread of the test process, so a test controls exactly what the target does -- read
    until the half-close then send, or reset -- and can see what it observed.
    """

    host: Host
    address: str
    port: int
    handler: Callable[[socket.socket], None]
    error: BaseException | None = None
    peer: str | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _serve(self, listener: socket.socket) -> None:
        try:
            conn, peer = listener.accept()
            self.peer = str(peer[0])
            with conn:
                conn.settimeout(scaled(IO_TIMEOUT))
                self.handler(conn)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            listener.close()

    def join(self) -> None:
        """Wait for the handler to finish; re-raise what went wrong in it."""
        assert self._thread is not None
        self._thread.join(scaled(SERVER_JOIN))
        if self._thread.is_alive():
            raise AssertionError(
                f"scripted server on port {self.port} still busy after "
                f"{scaled(SERVER_JOIN):g}s (no connection reached it?)"
            )
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def scripted_server(
    host: Host, address: str, port: int, handler: Callable[[socket.socket], None]
) -> Iterator[ScriptedServer]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = host.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1)
    listener.settimeout(scaled(SERVER_JOIN))
    server = ScriptedServer(host, address, port, handler)
    server._thread = threading.Thread(
        target=server._serve, args=(listener,), name=f"scripted-{port}", daemon=True
    )
    server._thread.start()
    try:
        yield server
    finally:
        # Unblocks accept() if the test failed before connecting.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        server._thread.join(scaled(SERVER_JOIN))


def expect_reset_or_refusal(
    action: Callable[[], object], *, what: str, within: float = PROMPT
) -> float:
    """Run ``action`` (connect / send / recv on the app socket); it must fail with a
    refusal or reset within ``within`` seconds (scaled). Returns the seconds it took.

    A clean EOF is a failure too: the app would take the remote's refusal or reset for a
    server that accepted and then closed normally.
    """
    __tracebackhide__ = True
    started = time.monotonic()
    try:
        result = action()
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        elapsed = time.monotonic() - started
        bound = scaled(within)
        assert elapsed < bound, f"{what}: the app learnt it after {elapsed:.1f}s (> {bound:g}s)"
        return elapsed
    except TimeoutError:
        raise AssertionError(
            f"{what}: the app saw neither a reset nor a refusal, only its own "
            f"{time.monotonic() - started:.1f}s timeout"
        ) from None
    elapsed = time.monotonic() - started
    raise AssertionError(
        f"{what}: the app saw {result!r} after {elapsed:.2f}s (a clean EOF or "
        "data), not a reset or refusal"
    )
