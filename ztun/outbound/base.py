"""What the engine needs from an outbound, whichever it is (SOCKS5, direct, reject)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .target import Target

#: Called once per datagram that comes back: (who sent it, its payload). Called from the
#: event loop's reader callback, so it must not block; exceptions are logged and dropped.
DatagramHandler = Callable[[Target, bytes], None]


@dataclass(frozen=True, slots=True)
class TcpStream:
    """An open outbound TCP stream: a connected non-blocking socket, handshake done.

    `early` holds tunnel bytes the proxy sent in the same segment as its reply (a server
    speaking first, e.g. SMTP or SSH, through a fast proxy): the caller must deliver them
    to the app *before* anything it reads from `sock`. The caller owns `sock` and closes it,
    then calls `release()` (a proxy counts its open flows for health and least-connections).
    `via` names the proxy that carries it (a group's member), when one does.
    """

    sock: socket.socket
    early: bytes = b""
    via: str | None = None
    on_release: Callable[[], None] | None = None

    def release(self) -> None:
        """The flow on this stream is over (idempotent only if `on_release` is)."""
        if self.on_release is not None:
            self.on_release()


class UdpAssociation(Protocol):
    """A UDP path to any destination, alive until `closed` completes.

    `send` never blocks and never raises for a lost datagram: a full socket buffer, an
    ICMP error or a send after close drops the datagram (counted in `dropped`), as the
    network would.
    """

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the association ends (closed by us, or by the proxy)."""
        ...

    @property
    def dropped(self) -> int: ...

    def send(self, target: Target, payload: bytes) -> None: ...

    def close(self) -> None: ...


class Outbound(Protocol):
    """Optional: ``async open_probe(target) -> TcpStream``, `open_tcp` for a health probe
    (`ztun.outbound.probe`), when an outbound opens streams in ways that would time
    something besides the proxy (SOCKS5's pipelining trial); without it probes use
    `open_tcp`."""

    async def open_tcp(self, target: Target) -> TcpStream:
        """Open a TCP stream to `target`; raises an OutboundError subclass."""
        ...

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        """Open a UDP association; replies are passed to `on_datagram`."""
        ...
