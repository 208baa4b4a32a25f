"""Outbound sockets: non-blocking, marked, bound to a device, connected with a deadline.

ztun's own traffic must not be routed back into its TUN. Auto-route does that with policy
routing keyed on a fwmark (SO_MARK, needs CAP_NET_ADMIN) or by pinning the socket to the
real uplink (SO_BINDTODEVICE); both are set before connect(), when the route is chosen.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from .errors import OutboundError

#: Both are Linux-only; elsewhere the options are refused with a clear message.
_SO_MARK: int | None = getattr(socket, "SO_MARK", None)
_SO_BINDTODEVICE: int | None = getattr(socket, "SO_BINDTODEVICE", None)

SockAddr = tuple[Any, ...]


_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def make_socket(
    family: int,
    kind: int,
    *,
    proto: int = 0,
    fwmark: int | None = None,
    bind_interface: str | None = None,
) -> socket.socket:
    """A non-blocking socket with the routing options applied (TCP_NODELAY for TCP).

    Raises OutboundError when an option cannot be set: that is a configuration problem
    (missing capability, unknown interface), not a network one.
    """
    # SOCK_NONBLOCK at creation saves the FIONBIO ioctl per connection (Linux).
    sock = socket.socket(family, kind | _SOCK_NONBLOCK, proto)
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        if fwmark is not None:
            if _SO_MARK is None:
                raise OutboundError("fwmark (SO_MARK) is supported on Linux only")
            _setopt(sock, _SO_MARK, fwmark, f"fwmark {fwmark:#x}", "needs CAP_NET_ADMIN")
        if bind_interface:
            if _SO_BINDTODEVICE is None:
                raise OutboundError("bind_interface (SO_BINDTODEVICE) is supported on Linux only")
            _setopt(
                sock,
                _SO_BINDTODEVICE,
                bind_interface.encode(),
                f"bind_interface {bind_interface!r}",
                "does the interface exist? before Linux 5.7 it needs CAP_NET_RAW",
            )
        if kind == socket.SOCK_STREAM:
            # Proxied request/response traffic must not wait for Nagle's timer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _setopt(sock: socket.socket, opt: int, value: int | bytes, what: str, hint: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, opt, value)
    except OSError as exc:
        raise OutboundError(f"cannot set {what}: {exc.strerror} ({hint})") from exc


def describe(exc: OSError) -> str:
    """The errno's text ("Connection refused"): asyncio's connect errors bury it in args."""
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def sockaddr_for(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> SockAddr:
    return (str(ip), port) if ip.version == 4 else (str(ip), port, 0, 0)


def literal_address(host: str, port: int) -> tuple[int, SockAddr] | None:
    """(family, sockaddr) when `host` is an IP literal, else None (a name to resolve)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, sockaddr_for(ip, port)


async def resolve(host: str, port: int, kind: int) -> list[tuple[int, SockAddr]]:
    """(family, sockaddr) candidates for host:port; IP literals skip the resolver."""
    literal = literal_address(host, port)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    return [(info[0], info[4]) for info in infos]


async def _connect_telling(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    sockaddr: Any,
    on_connecting: Callable[[tuple[str, int]], None],
) -> None:
    """`loop.sock_connect`, telling the local address once the SYN is sent."""
    err = sock.connect_ex(sockaddr)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))
    on_connecting(sock.getsockname()[:2])
    if err == 0:
        return
    try:
        await loop.sock_connect(sock, sockaddr)  # EALREADY: it waits for the handshake
    except OSError as exc:
        if exc.errno != errno.EISCONN:  # it completed between the two calls
            raise


async def connect_tcp(
    host: str,
    port: int,
    *,
    timeout: float,
    fwmark: int | None = None,
    bind_interface: str | None = None,
    on_connecting: Callable[[tuple[str, int]], None] | None = None,
) -> socket.socket:
    """Connect to host:port, trying each resolved address in turn within one deadline.

    `on_connecting(local address, port)` (Linux): called as each SYN leaves, before any
    answer can be read -- what lets the engine know a SYN of ztun's own that the routes
    sent back into its TUN (ztun.outbound.direct.OWN_SOURCES).

    Raises TimeoutError when the deadline passes, socket.gaierror when the name does not
    resolve, or the last address's OSError (ConnectionRefusedError, ...).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        candidates = await resolve(host, port, socket.SOCK_STREAM)
        last_error: OSError = OSError(f"{host} resolved to no address")
        for family, sockaddr in candidates:
            sock = make_socket(
                family, socket.SOCK_STREAM, fwmark=fwmark, bind_interface=bind_interface
            )
            try:
                if on_connecting is None or sys.platform != "linux":
                    await loop.sock_connect(sock, sockaddr)
                else:
                    await _connect_telling(loop, sock, sockaddr, on_connecting)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last_error
