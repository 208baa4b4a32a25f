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
The exchange runs on loop callbacks (`handshake.Dial`), not an await per message: the
per-connection cost of a proxied flow is mostly this (issue 17 item 4).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .base import TcpStream
from .errors import ProxyUnreachable
from .handshake import Dial
from .opening import Done, Opening, TaskOpening, until_done
from .protocol import HandshakeCore, LocalProtocolError
from .sockets import SockAddr, connect_tcp, describe, literal_address, make_socket, resolve
from .url import ProxyURL, parse_proxy_url

T = TypeVar("T")


def _cause(exc: OSError) -> OSError | None:
    """What a ProxyUnreachable chains to: a timeout says all there is by itself."""
    return None if isinstance(exc, TimeoutError) else exc


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
        literal = literal_address(url.host, url.port)
        #: An IP literal's one address, kept: nothing to resolve per connection.
        self._addresses = None if literal is None else [literal]

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
        except OSError as exc:
            raise self._unreachable(exc) from _cause(exc)

    def _unreachable(self, exc: OSError) -> ProxyUnreachable:
        """How not reaching the proxy is reported (``refused`` set on ECONNREFUSED)."""
        if isinstance(exc, TimeoutError):
            return ProxyUnreachable(
                f"{self.label}: connect timed out after {self.connect_timeout:g}s"
            )
        if isinstance(exc, socket.gaierror):
            return ProxyUnreachable(f"{self.label}: cannot resolve host: {exc.strerror}")
        return ProxyUnreachable(
            f"{self.label}: {describe(exc)}", refused=exc.errno == errno.ECONNREFUSED
        )

    def start_handshake(
        self,
        make_core: Callable[[socket.socket], HandshakeCore],
        settle: Settle[T],
        on_done: Done[tuple[socket.socket, T, bytes]],
        *,
        protocol: str,
        handshake_timeout: float | None = None,
        then_timeout: float | None = None,
    ) -> Opening:
        """Connect and run a core to its end, by callbacks (`handshake.Dial`): `on_done`
        gets (socket, settle's result, early tunnel bytes) or the error (`opening`'s
        contract). The core is made once the socket exists (`make_core(sock)`: SOCKS5
        UDP ASSOCIATE names the zero address of the family the proxy was reached in).
        `protocol` names what was expected in the timeout message ("no SOCKS5 answer");
        `connect_timeout` bounds the connect and, separately, the handshake (unless
        `handshake_timeout` is given); `then_timeout` bounds the rest of it once the
        proxy's first answer is in, from then on (see `handshake.Dial`). The socket is
        closed on every failure.
        """

        def dial(candidates: Sequence[tuple[int, SockAddr]]) -> Dial[T]:
            return Dial(
                candidates,
                self._new_socket,
                make_core,
                settle,
                on_done,
                timeout=self.connect_timeout,
                label=self.label,
                protocol=protocol,
                handshake_timeout=handshake_timeout,
                then_timeout=then_timeout,
            ).start()

        if self._addresses is not None:
            return dial(self._addresses)
        return _ResolveThenDial(self._resolve(), dial, on_done)  # a name: resolve it now

    async def handshake(
        self,
        make_core: Callable[[socket.socket], HandshakeCore],
        settle: Settle[T],
        *,
        protocol: str,
        handshake_timeout: float | None = None,
        then_timeout: float | None = None,
    ) -> tuple[socket.socket, T, bytes]:
        """`start_handshake`, awaited."""
        return await until_done(
            lambda on_done: self.start_handshake(
                make_core,
                settle,
                on_done,
                protocol=protocol,
                handshake_timeout=handshake_timeout,
                then_timeout=then_timeout,
            ),
            dispose=_close_first,
        )

    async def _resolve(self) -> list[tuple[int, SockAddr]]:
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await resolve(self.url.host, self.url.port, socket.SOCK_STREAM)
        except (TimeoutError, socket.gaierror) as exc:
            raise self._unreachable(exc) from _cause(exc)

    def _new_socket(self, family: int) -> socket.socket:
        return make_socket(
            family, socket.SOCK_STREAM, fwmark=self.fwmark, bind_interface=self.bind_interface
        )


def _close_first(result: tuple[socket.socket, object, bytes]) -> None:
    result[0].close()


class _ResolveThenDial:
    """An opening for a proxy known by name: resolve it (it may change between flows),
    then dial the addresses it resolved to."""

    __slots__ = ("_dial", "_resolving")

    def __init__(
        self,
        resolving: Coroutine[Any, Any, list[tuple[int, SockAddr]]],
        dial: Callable[[list[tuple[int, SockAddr]]], Opening],
        on_done: Done[Any],
    ) -> None:
        self._dial: Opening | None = None

        def resolved(
            candidates: list[tuple[int, SockAddr]] | None, exc: BaseException | None
        ) -> None:
            if exc is not None or candidates is None:
                on_done(None, exc)
                return
            try:
                self._dial = dial(candidates)
            except Exception as bug:  # this flow's error, as it was when awaited
                on_done(None, bug)

        self._resolving = TaskOpening(resolving, resolved)

    def cancel(self) -> None:
        self._resolving.cancel()
        if self._dial is not None:
            self._dial.cancel()


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
