"""Byte relay between two connected non-blocking sockets, driven by loop readiness callbacks.

One shared receive buffer serves every connection (the loop runs one callback at a
time), so an idle connection costs no buffer at all; only bytes the far side could not
take yet are copied aside, and reading from that side pauses until they drain -- the
backpressure the kernel's socket buffers then carry back to the sender.
Half-close is propagated (EOF on one side becomes shutdown(SHUT_WR) on the other); an
error on either side aborts both with RST so the app sees what the remote did.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

SHARED_BUFFER_SIZE = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


def close_with_reset(sock: socket.socket) -> None:
    """Close so the peer gets RST, not FIN: how a refused or failed flow is reported."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class _Direction:
    __slots__ = ("buffer", "done", "dst", "eof", "loop", "moved", "pending", "relay", "src")

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket, buffer: memoryview) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.src = src
        self.dst = dst
        self.buffer = buffer
        self.pending: bytes = b""
        self.eof = False
        self.done = False
        self.moved = 0

    def start(self) -> None:
        self.loop.add_reader(self.src.fileno(), self.on_readable)

    def stop(self) -> None:
        self.loop.remove_reader(self.src.fileno())
        self.loop.remove_writer(self.dst.fileno())

    def on_readable(self) -> None:
        buf = self.buffer
        try:
            n = self.src.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.relay.abort(exc)
            return
        if n == 0:
            self.loop.remove_reader(self.src.fileno())
            self.eof = True
            self._finish_if_drained()
            return
        self.moved += n
        try:
            sent = self.dst.send(buf[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.relay.abort(exc)
            return
        if sent < n:
            self.pending = bytes(buf[sent:n])
            self.loop.remove_reader(self.src.fileno())
            self.loop.add_writer(self.dst.fileno(), self.on_writable)

    def on_writable(self) -> None:
        try:
            sent = self.dst.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.relay.abort(exc)
            return
        self.pending = self.pending[sent:]
        if self.pending:
            return
        self.loop.remove_writer(self.dst.fileno())
        if self.eof:
            self._finish_if_drained()
        else:
            self.loop.add_reader(self.src.fileno(), self.on_readable)

    def _finish_if_drained(self) -> None:
        if self.pending:
            return
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.done = True
        self.relay.direction_done()


class Relay:
    """Relay between `app` (the accepted hairpin socket) and `remote` (the outbound)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: socket.socket,
        remote: socket.socket,
        buffer: memoryview,
        on_close: Callable[[Relay, BaseException | None], None],
    ) -> None:
        self.loop = loop
        self.app = app
        self.remote = remote
        self._on_close = on_close
        self.up = _Direction(self, app, remote, buffer)
        self.down = _Direction(self, remote, app, buffer)
        self.closed = False

    @property
    def bytes_up(self) -> int:
        return self.up.moved

    @property
    def bytes_down(self) -> int:
        return self.down.moved

    def start(self, early_down: bytes = b"") -> None:
        if early_down:
            # Bytes the proxy sent right behind its reply belong to the app.
            self.down.moved += len(early_down)
            self.down.pending = early_down
            self.loop.add_writer(self.app.fileno(), self.down.on_writable)
        else:
            self.down.start()
        self.up.start()

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self._close(None, reset=False)

    def abort(self, exc: BaseException | None = None) -> None:
        self._close(exc, reset=True)

    def _close(self, exc: BaseException | None, *, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.stop()
        self.down.stop()
        for sock in (self.app, self.remote):
            if reset:
                close_with_reset(sock)
            else:
                sock.close()
        self._on_close(self, exc)
