"""LocalHost: the machine the harness runs on, as a Host (no namespace, no VM).

The single-host topology needs one host that holds the app, the implementation, the
SOCKS5 server and the targets. On Linux that host is a namespace the harness creates; on a
machine without namespaces (macOS, Windows, a container that may not create them) it is
the machine itself: commands run as plain children, sockets are plain sockets, readiness
is checked against this machine's own tables.

Network safety: on Linux a LocalHost refuses to be the root network namespace (it would
get a TUN, addresses and routes): use it inside a namespace you created (``ip netns exec
NAME ...``) or a throwaway VM. Elsewhere the caller is the one who chose to run the suite
on this machine, and the suite only adds routes for the documentation prefixes.

Process management is harness.proc's LocalProcess (Linux: pidfds); another OS needs its
own process backend there first.
"""

from __future__ import annotations

import contextlib
import os
import socket as socketlib
import sys
from pathlib import Path

from harness.hosts.base import (
    IfAddress,
    LinkExists,
    PathExists,
    Readiness,
    TcpListening,
    UdpListening,
)
from harness.hosts.children import ChildHost

__all__ = ["LocalHost", "RootNamespaceRefused", "in_root_netns"]


class RootNamespaceRefused(RuntimeError):
    """A LocalHost would have changed the root network namespace of a Linux machine."""


def in_root_netns() -> bool:
    """Linux: whether this process may be in the machine's root network namespace.

    Exact when pid 1's namespace is readable (the same one: root). Where it is not (some
    VM inits hide it, even from root), only a namespace named in /run/netns counts as
    provably not the root one; anything else is treated as the root namespace.
    """
    try:
        own = os.stat("/proc/self/ns/net").st_ino
    except OSError:  # no /proc: not Linux
        return False
    with contextlib.suppress(OSError):
        return own == os.stat("/proc/1/ns/net").st_ino
    with contextlib.suppress(OSError):
        for entry in os.scandir("/run/netns"):
            with contextlib.suppress(OSError):
                if os.stat(entry.path).st_ino == own:
                    return False
    return True


def _listening(kind: str, port: int, family: int | None) -> bool:
    """Linux: a port in /proc/net/{tcp,udp}[6] (TCP in LISTEN). Elsewhere: bind() to the
    loopback port fails while something holds it (the listener's own address may differ,
    so this is the portable approximation)."""
    if sys.platform == "linux":
        from harness.hosts.netns import _proc_net_ports

        tables = [t for t, f in ((kind, 4), (kind + "6", 6)) if family in (None, _FAMILY[f])]
        for table in tables:
            with contextlib.suppress(FileNotFoundError):
                text = Path(f"/proc/net/{table}").read_text()
                if port in _proc_net_ports(text, listen_only=kind == "tcp"):
                    return True
        return False
    sock_type = socketlib.SOCK_STREAM if kind == "tcp" else socketlib.SOCK_DGRAM
    for fam, address in ((socketlib.AF_INET, "127.0.0.1"), (socketlib.AF_INET6, "::1")):
        if family not in (None, fam):
            continue
        with socketlib.socket(fam, sock_type) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                return True
    return False


_FAMILY = {4: socketlib.AF_INET, 6: socketlib.AF_INET6}


class LocalHost(ChildHost):
    """This machine as a Host; see the module docstring."""

    def __init__(self, name: str = "local", *, log_dir: Path) -> None:
        if sys.platform == "linux" and in_root_netns():
            raise RootNamespaceRefused(
                "a LocalHost on Linux must not be the root network namespace: run inside "
                "a namespace you created (ip netns exec NAME ...) or a throwaway VM"
            )
        super().__init__(name, log_dir)
        self.label = name
        self._closed = False

    def __repr__(self) -> str:
        return f"<LocalHost {self._name}>"

    def is_ready(self, ready: Readiness) -> bool:
        if isinstance(ready, TcpListening):
            return _listening("tcp", ready.port, ready.family)
        if isinstance(ready, UdpListening):
            return _listening("udp", ready.port, ready.family)
        if isinstance(ready, PathExists):
            return Path(ready.path).exists()
        if isinstance(ready, LinkExists):
            return ready.name in self.interfaces()
        raise TypeError(f"{type(ready).__name__} is not a host condition")

    def socket(
        self,
        family: socketlib.AddressFamily | int = socketlib.AF_INET,
        type: socketlib.SocketKind | int = socketlib.SOCK_STREAM,
        proto: int = 0,
    ) -> socketlib.socket:
        return socketlib.socket(family, type, proto)

    def interfaces(self) -> list[str]:
        return [name for _, name in socketlib.if_nameindex()]

    def addresses(self, ifname: str | None = None) -> list[IfAddress]:
        if sys.platform != "linux":
            raise NotImplementedError("LocalHost.addresses: Linux only so far")
        from pyroute2 import IPRoute

        from harness.hosts.netns import addresses_of

        with IPRoute() as ipr:
            return addresses_of(ipr, ifname)

    def close(self) -> None:
        """Stop every process spawned here, newest first (idempotent)."""
        if not self._closed:
            self._closed = True
            self.stop_processes()
