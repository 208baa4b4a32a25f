"""The path every conformance test drives: app -> TUN -> tun2socks -> SOCKS5 -> server.

The implementation under test (``--tun2socks``) runs in the client host of the default
topology; the proxy host does not forward, so a byte that reaches the server was carried
by the implementation and the SOCKS5 server, nothing else.  Helpers here are the "app":
plain sockets opened inside the client host, which the kernel routes into the TUN.

Which SOCKS5 server a behaviour uses, and why, is said once here:

* ``danted`` -- a real, fast server with half-close; used for TCP behaviours.
* ``recording`` -- the harness's own server: it logs what it relayed (the evidence for a
  round trip, for "not relayed" checks), turns a target's RST into an RST towards the
  client (danted answers a reset with a FIN, so a tun2socks behind it cannot know), and
  accepts UDP from the control connection's address whatever client address the
  UDP ASSOCIATE declared -- so UDP rows measure the tun2socks, not one server's policy.
  The declared address is checked by its own row.
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

from harness.hosts import Host
from harness.impls import RunningImpl
from harness.peers.starters import Socks5Server
from harness.peers.targets import seeded_chunks
from harness.topo import Topology

DEVICE = "ctun0"
SOCKS_PORT = 1080
DATA_PORT, ECHO_PORT, UDP_ECHO_PORT = 5001, 5002, 5003
SCRIPTED_PORT = 5004
"""Where a test's own one-shot server listens (half-close, reset)."""
CLOSED_PORT = 5009
"""Nothing ever listens here: connecting must be refused."""

MIB = 1 << 20
RECV_CHUNK = 1 << 20
IO_TIMEOUT = 30.0
"""Seconds any single socket operation of the app may block: a hang fails, never stalls."""
BULK_TIMEOUT = 120.0
PROMPT = 5.0
"""Seconds within which an app must learn that its connection was refused or reset
(a timeout-driven answer takes the proxy's connect timeout, 10 s or more)."""
SERVER_JOIN = 30.0

ProxyKind = Literal["danted", "recording"]
TargetKind = Literal["echo", "data", "udp"]


@dataclass
class Path:
    """The topology with targets, a SOCKS5 server and the implementation running."""

    topo: Topology
    proxy: Socks5Server
    impl: RunningImpl
    server_v4: str
    server_v6: str

    @property
    def client(self) -> Host:
        return self.topo.client

    @property
    def server(self) -> Host:
        return self.topo.server

    def server_ip(self, v6: bool = False) -> str:
        return self.server_v6 if v6 else self.server_v4

    def tun_address(self, version: int) -> str:
        """The implementation's own TUN address of that family (the app's source)."""
        for cidr in self.impl.addresses:
            iface = ipaddress.ip_interface(cidr)
            if iface.version == version:
                return str(iface.ip)
        raise LookupError(f"no IPv{version} address on {self.impl.device}: {self.impl.addresses}")

    def connect(self, port: int, *, v6: bool = False, timeout: float = IO_TIMEOUT) -> socket.socket:
        """A TCP connection opened by an app in the client (routed into the TUN)."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self.client.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((self.server_ip(v6), port))
        except BaseException:
            sock.close()
            raise
        return sock

    def udp(self, *, v6: bool = False, timeout: float = PROMPT) -> socket.socket:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self.client.socket(family, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
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
                conn.settimeout(IO_TIMEOUT)
                self.handler(conn)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            listener.close()

    def join(self) -> None:
        """Wait for the handler to finish; re-raise what went wrong in it."""
        assert self._thread is not None
        self._thread.join(SERVER_JOIN)
        if self._thread.is_alive():
            raise AssertionError(
                f"scripted server on port {self.port} still busy after "
                f"{SERVER_JOIN:g}s (no connection reached it?)"
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
    listener.settimeout(SERVER_JOIN)
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
        server._thread.join(SERVER_JOIN)


def expect_reset_or_refusal(action: Callable[[], object], *, what: str) -> float:
    """Run ``action`` (connect / send / recv on the app socket); it must fail with a
    refusal or reset within PROMPT seconds. Returns the seconds it took.

    A clean EOF is a failure too: the app would take the remote's refusal or reset for a
    server that accepted and then closed normally.
    """
    __tracebackhide__ = True
    started = time.monotonic()
    try:
        result = action()
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        elapsed = time.monotonic() - started
        assert elapsed < PROMPT, f"{what}: the app learnt it only after {elapsed:.1f}s"
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
