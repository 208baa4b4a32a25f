"""Reach a proxy and run one handshake core, by callbacks on the event loop.

`dialer.ProxyDialer.start_handshake` runs every proxy outbound's handshake (SOCKS5,
SOCKS4, HTTP CONNECT) through `Dial`. A new connection through a proxy used to be a chain of
awaits - `sock_connect`, then `sock_sendall` and `sock_recv` per message - each a future,
a reader or writer added and removed, and a task step. `Dial` is one object whose
callbacks the loop calls directly: connect, write what the core queued, feed what the
proxy sent, and call `on_done` once at the end (an `opening.Opening`: no future, and no
task unless someone awaits it through `opening.until_done`).
It also writes the first message right behind a connect() that returned EINPROGRESS: to
a proxy across a veth or loopback the kernel has usually finished the three-way
handshake by the time connect() returns, so the write goes out at once and the wait for
writability is skipped (when it has not, the write fails with EAGAIN and the wait
happens as before).

The core is sans-IO (`protocol.HandshakeCore`); `settle` turns each of its events into a
result (the handshake is done), None (go on) or an `OutboundError` (it failed). Errors
carry the messages the await-based adapter gave: `ProxyUnreachable` for the TCP connect
(refused - with `refused` set -, no route, timed out), `ProxyTimeout` for a handshake
without an answer, `ProxyProtocolError` for garbage or a connection lost mid-handshake.
`timeout` bounds the connect and, separately, the handshake (`handshake_timeout`, when
given, bounds the handshake instead: a pipelined SOCKS5 trial gets little time for its
answers, but its connect the usual time, since a lost SYN is retransmitted only after a
second); `then_timeout`, when given, bounds the rest of the handshake once the proxy's
first answer is in, from then on and instead of the handshake's bound (a pipelined
SOCKS5 trial: its reply gets as long after the method selection as the method selection
got, however long that took).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .errors import OutboundError, ProxyProtocolError, ProxyTimeout, ProxyUnreachable
from .opening import Done
from .protocol import HandshakeCore, RemoteProtocolError
from .sockets import SockAddr, describe

T = TypeVar("T")

#: Handshake messages are tiny; one read takes a whole reply plus any early tunnel bytes.
HANDSHAKE_READ = 4096

_IN_PROGRESS = {errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}


class Dial(Generic[T]):
    """One connection to a proxy and its handshake, an `opening.Opening`: `on_done` gets
    (socket, result, early tunnel bytes) or the error. The socket is closed on failure
    and on `cancel()`."""

    def __init__(
        self,
        candidates: Sequence[tuple[int, SockAddr]],
        new_socket: Callable[[int], socket.socket],
        make_core: Callable[[socket.socket], HandshakeCore],
        settle: Callable[[object], T | None],
        on_done: Done[tuple[socket.socket, T, bytes]],
        *,
        timeout: float,
        label: str,
        protocol: str,
        handshake_timeout: float | None = None,
        then_timeout: float | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_done: Done[tuple[socket.socket, T, bytes]] | None = on_done
        self._starting = False
        self._candidates = candidates
        self._next = 0
        self._new_socket = new_socket
        self._make_core = make_core
        self._settle = settle
        self._timeout = timeout  # the connect's; `_on_connected` sets the handshake's
        self._handshake_timeout = timeout if handshake_timeout is None else handshake_timeout
        self._label = label
        self._protocol = protocol
        self._then_timeout = then_timeout
        self._since = ""  # what the timeout message counts from
        self._sock: socket.socket | None = None
        self._core: HandshakeCore | None = None
        self._pending = b""
        self._connected = False
        self._reading = False
        self._writing = False
        self._last_error: OSError | None = None
        # One timer for both phases: connecting pushes the handshake's deadline out, and
        # the timer, when it fires early, re-arms itself for the rest (a cancelled timer
        # and a new one per connection would cost more than the rare re-arm).
        self._deadline = self._armed = self._loop.time() + timeout
        self._timer = self._loop.call_at(self._armed, self._on_timeout)

    def start(self) -> Dial[T]:
        """Begin connecting; a failure found at once is delivered on the next loop pass
        (the `opening` contract: never from inside this call)."""
        self._starting = True
        try:
            self._try_next_address()
        except BaseException:
            # No opening for the caller to cancel: stop the timer and close the socket
            # now, or the timer would report this dead dial to `on_done` later.
            self.cancel()
            raise
        finally:
            self._starting = False
        return self

    def cancel(self) -> None:
        """The flow went away (closed, its deadline passed): stop, close the socket."""
        if self._on_done is None:
            return
        self._on_done = None
        self._stop_watching()
        self._close_socket()

    # -- connect --------------------------------------------------------------------------

    def _try_next_address(self) -> None:
        if self._next >= len(self._candidates):
            exc = self._last_error or OSError(f"{self._label} resolved to no address")
            refused = exc.errno == errno.ECONNREFUSED  # nothing listens: health counts it
            self._fail(
                ProxyUnreachable(f"{self._label}: {describe(exc)}", refused=refused), cause=exc
            )
            return
        family, sockaddr = self._candidates[self._next]
        self._next += 1
        try:
            sock = self._sock = self._new_socket(family)
        except (OutboundError, OSError) as exc:
            # A routing option the kernel refused (configuration), or no socket for this
            # flow (EMFILE, ENOBUFS): the flow's error, not the proxy's.
            self._fail(exc)
            return
        code = sock.connect_ex(sockaddr)
        if code == 0:
            self._on_connected()
        elif code in _IN_PROGRESS:
            # Optimistic: the first message may go out now (see the module docstring).
            self._core = self._make_core(sock)
            self._pending = self._core.data_to_send()
            try:
                sent = sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                self._watch_writable(self._on_connect_writable)
                return
            except OSError as exc:
                self._address_failed(exc)
                return
            self._pending = self._pending[sent:]
            self._on_connected()
        else:
            self._address_failed(OSError(code, os.strerror(code)))

    def _on_connect_writable(self) -> None:
        sock = self._sock
        assert sock is not None
        self._unwatch_writable()
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._address_failed(OSError(code, os.strerror(code)))
            return
        self._on_connected()

    def _address_failed(self, exc: OSError) -> None:
        self._last_error = exc
        self._core = None
        self._pending = b""
        self._close_socket()
        self._try_next_address()

    def _on_connected(self) -> None:
        sock = self._sock
        assert sock is not None
        self._connected = True
        self._timeout = self._handshake_timeout
        self._deadline = self._loop.time() + self._timeout  # the handshake's own
        if self._deadline < self._armed:  # a handshake bound tighter than the connect's
            self._rearm(self._deadline)
        if self._core is None:
            self._core = self._make_core(sock)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._reading = True
        self._flush()

    # -- handshake ------------------------------------------------------------------------

    def _flush(self) -> None:
        sock, core = self._sock, self._core
        assert sock is not None and core is not None
        out = self._pending + core.data_to_send()
        if not out:
            return
        try:
            sent = sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        self._pending = out[sent:]
        if self._pending:
            self._watch_writable(self._flush)
        elif self._writing:
            self._unwatch_writable()

    def _on_readable(self) -> None:
        sock, core = self._sock, self._core
        assert sock is not None and core is not None
        try:
            data = sock.recv(HANDSHAKE_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        result: T | None = None
        try:
            events = core.receive_data(data)
            for event in events:
                result = self._settle(event)
                if result is not None:
                    break
        except RemoteProtocolError as exc:
            self._fail(ProxyProtocolError(f"{self._label}: {exc}"))
            return
        except Exception as exc:  # an OutboundError from settle, or a bug: this flow's
            self._fail(exc)
            return
        if result is not None:
            # Outside the try: what `on_done` raises is its own bug, not this handshake's
            # failure (caught here, it would vanish: `on_done` is spent).
            self._succeed(result, core.trailing_data)
            return
        if events and self._then_timeout is not None:
            self._bound_rest(self._then_timeout)
        self._flush()

    def _bound_rest(self, seconds: float) -> None:
        """The rest of the handshake gets `seconds` from now (once), sooner or later than
        the handshake's own deadline: each answer gets its own bound, so a slow first
        answer does not eat into the wait for the next."""
        self._then_timeout = None
        self._timeout, self._since = seconds, " of the first"
        self._deadline = self._loop.time() + seconds
        if self._deadline < self._armed:  # later: the timer re-arms itself when it fires
            self._rearm(self._deadline)

    def _rearm(self, deadline: float) -> None:
        self._armed = deadline
        self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timeout)

    def _lost(self, exc: OSError) -> None:
        self._fail(
            ProxyProtocolError(
                f"{self._label}: connection lost during the handshake: {describe(exc)}"
            ),
            cause=exc,
        )

    def _on_timeout(self) -> None:
        if self._deadline > self._armed:  # connected since: the handshake's own time
            self._armed = self._deadline
            self._timer = self._loop.call_at(self._armed, self._on_timeout)
            return
        if self._connected:
            self._fail(
                ProxyTimeout(
                    f"{self._label}: no {self._protocol} answer within "
                    f"{self._timeout:g}s{self._since}"
                )
            )
        else:
            self._fail(
                ProxyUnreachable(f"{self._label}: connect timed out after {self._timeout:g}s")
            )

    # -- the end --------------------------------------------------------------------------

    def _watch_writable(self, callback: Callable[[], None]) -> None:
        assert self._sock is not None
        self._loop.add_writer(self._sock.fileno(), callback)
        self._writing = True

    def _unwatch_writable(self) -> None:
        if self._writing and self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
        self._writing = False

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _stop_watching(self) -> None:
        self._timer.cancel()
        self._unwatch_writable()
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def _succeed(self, result: T, early: bytes) -> None:
        self._stop_watching()
        sock = self._sock
        assert sock is not None
        self._sock = None
        self._deliver((sock, result, early), None)  # the caller owns the socket now

    def _fail(self, exc: BaseException, *, cause: BaseException | None = None) -> None:
        self._stop_watching()
        self._close_socket()
        if cause is not None:
            exc.__cause__ = cause
        self._deliver(None, exc)

    def _deliver(
        self, result: tuple[socket.socket, T, bytes] | None, exc: BaseException | None
    ) -> None:
        if self._starting:  # never from inside start(); a cancel() until then still holds
            self._loop.call_soon(self._deliver, result, exc)
            return
        on_done, self._on_done = self._on_done, None
        if on_done is None:  # cancelled
            if result is not None:
                result[0].close()
            return
        on_done(result, exc)
