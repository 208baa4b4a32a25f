"""The adapter half every proxy outbound shares: reach the proxy, drive a handshake core.

The protocol cores (`socks5_proto`, `socks4_proto`, `http_connect_proto`) never touch a
socket; `ProxyDialer` is the only code that does for them (aioquic's asyncio adapter is the
model): connect with the routing marks, write what the core queued, feed it what the proxy
sent, and hand each event to the outbound's `settle` function, which either finishes the
handshake (returns a result), fails it (raises an `OutboundError` naming the proxy), or
lets it go on (returns None).

`connect_timeout` bounds the TCP connect to the proxy and, separately, the handshake (a
proxy that accepts but stalls raises `ProxyTimeout`). For CONNECT-style requests the reply
comes only after the proxy reached the target, so a slow target also counts against it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import TypeVar

from .base import TcpStream
from .errors import ProxyProtocolError, ProxyTimeout, ProxyUnreachable
from .protocol import HandshakeCore, LocalProtocolError, RemoteProtocolError
from .sockets import connect_tcp, describe
from .url import ProxyURL, parse_proxy_url

T = TypeVar("T")

#: Handshake messages are small; one read takes a whole reply plus any early tunnel bytes.
HANDSHAKE_READ = 4096

#: settle(event): a result ends the handshake, None lets it continue, an error fails it.
Settle = Callable[[object], T | None]


class ProxyDialer:
    """Connections to one proxy, each carried through one handshake core."""

    def __init__(
        self,
        url: ProxyURL,
        *,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.fwmark = fwmark
        self.bind_interface = bind_interface

    @property
    def label(self) -> str:
        """How messages name the proxy: ``http proxy 10.0.0.2:3128``."""
        return self.url.label

    async def connect(self) -> socket.socket:
        """A TCP connection to the proxy; ProxyUnreachable (``refused`` set on ECONNREFUSED)."""
        try:
            return await connect_tcp(
                self.url.host,
                self.url.port,
                timeout=self.connect_timeout,
                fwmark=self.fwmark,
                bind_interface=self.bind_interface,
            )
        except TimeoutError:
            raise ProxyUnreachable(
                f"{self.label}: connect timed out after {self.connect_timeout:g}s"
            ) from None
        except socket.gaierror as exc:
            raise ProxyUnreachable(f"{self.label}: cannot resolve host: {exc.strerror}") from exc
        except OSError as exc:
            raise ProxyUnreachable(
                f"{self.label}: {describe(exc)}", refused=exc.errno == errno.ECONNREFUSED
            ) from exc

    async def handshake(
        self,
        make_core: Callable[[socket.socket], HandshakeCore],
        settle: Settle[T],
        *,
        protocol: str,
    ) -> tuple[socket.socket, T, bytes]:
        """Connect and run a core to its end: (socket, settle's result, early tunnel bytes).

        The core is made once connected (`make_core(sock)`: SOCKS5 UDP ASSOCIATE names
        the zero address of the family the proxy was reached in). `protocol` names what
        was expected in the timeout message ("no SOCKS5 answer"). The socket is closed on
        every failure.
        """
        sock = await self.connect()
        try:
            core = make_core(sock)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    result = await _drive(sock, core, settle)
            except TimeoutError:
                raise ProxyTimeout(
                    f"{self.label}: no {protocol} answer within {self.connect_timeout:g}s"
                ) from None
            except RemoteProtocolError as exc:
                raise ProxyProtocolError(f"{self.label}: {exc}") from None
            except OSError as exc:
                raise ProxyProtocolError(
                    f"{self.label}: connection lost during the handshake: {describe(exc)}"
                ) from exc
            return sock, result, core.trailing_data
        except BaseException:
            sock.close()
            raise


async def _drive(sock: socket.socket, core: HandshakeCore, settle: Settle[T]) -> T:
    loop = asyncio.get_running_loop()
    while True:
        out = core.data_to_send()
        if out:
            await loop.sock_sendall(sock, out)
        data = await loop.sock_recv(sock, HANDSHAKE_READ)
        for event in core.receive_data(data):
            result = settle(event)
            if result is not None:
                return result


class ProxyOutboundBase:
    """The configuration every proxy outbound shares: its URL, checked when ztun starts
    (credentials the protocol cannot carry fail now, not on the first flow), the routing
    options of its sockets, and its dialer."""

    def __init__(
        self,
        url: ProxyURL | str,
        *,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self.url = parse_proxy_url(url) if isinstance(url, str) else url
        try:
            self._check_url()
        except LocalProtocolError as exc:
            raise ValueError(f"proxy {self.url}: {exc}") from None
        self.connect_timeout = connect_timeout
        self.fwmark = fwmark
        self.bind_interface = bind_interface
        self._dialer = ProxyDialer(
            self.url, connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.url)!r})"

    def _check_url(self) -> None:
        """Raise LocalProtocolError when this protocol cannot use `self.url`."""

    async def _tunnel(
        self, core: HandshakeCore, settle: Settle[object], *, protocol: str
    ) -> TcpStream:
        """A CONNECT-style stream: one core, its tunnel bytes delivered as `early`."""
        sock, _result, early = await self._dialer.handshake(
            lambda _sock: core, settle, protocol=protocol
        )
        return TcpStream(sock, early)
