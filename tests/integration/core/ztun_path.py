"""ztun's integration tests: the default topology with ztun in the client.

The client reaches the server only through the proxy host (which does not forward), so
any byte that arrives at the server was carried by ztun and the SOCKS5 server.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from harness.impls import RunningImpl
from harness.peers.starters import Socks5Server
from harness.topo import Topology

DEVICE = "zt0"
SOCKS_PORT = 1080
DATA_PORT, ECHO_PORT, UDP_ECHO_PORT = 5001, 5002, 5003


@dataclass
class Path:
    """The topology with servers running and ztun started in the client."""

    topo: Topology
    proxy: Socks5Server
    ztun: RunningImpl
    server_v4: str
    server_v6: str

    def connect(self, port: int, *, v6: bool = False, timeout: float = 15.0) -> socket.socket:
        """A TCP connection opened by an app in the client (so it is routed into the TUN)."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self.topo.client.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect((self.server_v6 if v6 else self.server_v4, port))
        return sock

    def udp(self, *, v6: bool = False, timeout: float = 5.0) -> socket.socket:
        sock = self.topo.client.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        return sock


StartPath = Callable[..., Path]
