"""Byte relay between two connected non-blocking sockets, driven by loop readiness callbacks.

On Linux the bytes go socket -> pipe -> socket with splice(2) and never enter Python;
the pipe is borrowed from a pool only while bytes sit in it, so an idle connection
holds no pipe (and no buffer). Elsewhere (macOS, Windows, `--portable`, `--relay copy`)
a shared buffer with recv_into/send does the same job; the platform's probe decides
(`Accelerations.splice`).

One shared receive buffer serves every connection (the loop runs one callback at a
time), so an idle connection costs no buffer at all; only bytes the far side could not
take yet are copied aside, and reading from that side pauses until they drain -- the
backpressure the kernel's socket buffers then carry back to the sender.
Half-close is propagated (EOF on one side becomes shutdown(SHUT_WR) on the other); an
error on either side aborts both with RST so the app sees what the remote did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable

SHARED_BUFFER_SIZE = 256 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)
HAVE_SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 20  # bytes per splice; capped by /proc/sys/fs/pipe-max-size
F_SETPIPE_SZ = 1031
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class PipePool:
    """Pipes lent to relay directions while bytes are in flight, kept for reuse."""

    def __init__(self, keep: int = 64) -> None:
        self._free: list[tuple[int, int]] = []
        self._keep = keep
        self.pipe_size = PIPE_SIZE

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        import fcntl  # here, not at the top: the copy relay runs where fcntl does not exist

        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Where the size is refused the default 64 KiB pipe works, in smaller steps.
        with contextlib.suppress(OSError):
            self.pipe_size = fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def give(self, pipe: tuple[int, int]) -> None:
        if len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def discard(self, pipe: tuple[int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        while self._free:
            self.discard(self._free.pop())


def close_with_reset(sock: socket.socket) -> None:
    """Close so the peer gets RST, not FIN: how a refused or failed flow is reported."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


class _Direction:
    # `reading`/`writing`: whether src's reader / dst's writer is registered, so that
    # stopping a direction that already ran to its EOF costs no selector calls.
    __slots__ = (
        "buffer",
        "done",
        "dst",
        "eof",
        "loop",
        "moved",
        "pending",
        "reading",
        "relay",
        "src",
        "writing",
    )

    def __init__(
        self, relay: Relay, src: socket.socket, dst: socket.socket, buffer: memoryview
    ) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.src = src
        self.dst = dst
        self.buffer = buffer
        self.pending: bytes = b""
        self.eof = False
        self.done = False
        self.moved = 0
        self.reading = False
        self.writing = False

    def start(self) -> None:
        self.loop.add_reader(self.src.fileno(), self.on_readable)
        self.reading = True

    def stop(self) -> None:
        if self.reading:
            self._stop_reading()
        if self.writing:
            self._stop_writing()

    def _stop_reading(self) -> None:
        self.loop.remove_reader(self.src.fileno())
        self.reading = False

    def _stop_writing(self) -> None:
        self.loop.remove_writer(self.dst.fileno())
        self.writing = False

    def wait_writable(self) -> None:
        """Wake when dst can take more (`on_writable`)."""
        self.loop.add_writer(self.dst.fileno(), self.on_writable)
        self.writing = True

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
            self._stop_reading()
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
            self._wait_writable()

    def on_writable(self) -> None:
        if self._flush():
            self._resume()

    def _flush(self) -> bool:
        """Send what waits for dst; True once nothing does."""
        try:
            sent = self.dst.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.relay.abort(exc)
            return False
        self.pending = self.pending[sent:]
        return not self.pending

    def _wait_writable(self) -> None:
        """dst is full: stop reading src until it drains (backpressure)."""
        self._stop_reading()
        self.wait_writable()

    def _resume(self) -> None:
        self._stop_writing()
        if self.eof:
            self._finish_if_drained()
        else:
            self.start()

    def _finish_if_drained(self) -> None:
        if self.pending:
            return
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.done = True
        self.relay.direction_done()


class _SpliceDirection(_Direction):
    """src -> pipe -> dst with splice(2): the payload never enters user space."""

    __slots__ = ("in_pipe", "pipe", "pool")

    def __init__(
        self, relay: Relay, src: socket.socket, dst: socket.socket, pool: PipePool
    ) -> None:
        super().__init__(relay, src, dst, memoryview(b""))
        self.pool = pool
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0

    def stop(self) -> None:
        super().stop()
        if self.pipe is not None:
            # Bytes still in the pipe are lost with the flow: never hand them to another.
            self.pool.discard(self.pipe)
            self.pipe = None

    def on_readable(self) -> None:
        if self.pipe is None:
            self.pipe = self.pool.take()
        try:
            n = os.splice(self.src.fileno(), self.pipe[1], self.pool.pipe_size, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            self._release_if_empty()
            return
        except OSError as exc:
            self.relay.abort(exc)
            return
        if n == 0:
            self._stop_reading()
            self.eof = True
            self._release_if_empty()
            self._finish_if_drained()
            return
        self.moved += n
        self.in_pipe += n
        if not self._drain() and not self.relay.closed:
            self._wait_writable()

    def _drain(self) -> bool:
        """Move what is in the pipe to dst; False while dst is full (or on abort)."""
        while self.in_pipe:
            assert self.pipe is not None
            try:
                m = os.splice(self.pipe[0], self.dst.fileno(), self.in_pipe, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self.relay.abort(exc)
                return False
            self.in_pipe -= m
        self._release_if_empty()
        return True

    def _flush(self) -> bool:
        # Early bytes (sent by plain send) go before anything spliced.
        if self.pending and not super()._flush():
            return False
        return self._drain()

    def _release_if_empty(self) -> None:
        if self.pipe is not None and not self.in_pipe:
            self.pool.give(self.pipe)
            self.pipe = None

    def _finish_if_drained(self) -> None:
        if self.in_pipe:
            return
        super()._finish_if_drained()


class Relay:
    """Relay between `app` (the accepted hairpin socket) and `remote` (the outbound)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: socket.socket,
        remote: socket.socket,
        buffer: memoryview,
        on_close: Callable[[Relay, BaseException | None], None],
        pipes: PipePool | None = None,
    ) -> None:
        self.loop = loop
        self.app = app
        self.remote = remote
        self._on_close = on_close
        if pipes is not None:
            self.up: _Direction = _SpliceDirection(self, app, remote, pipes)
            self.down: _Direction = _SpliceDirection(self, remote, app, pipes)
        else:
            self.up = _Direction(self, app, remote, buffer)
            self.down = _Direction(self, remote, app, buffer)
        self.closed = False

    @property
    def bytes_up(self) -> int:
        return self.up.moved

    @property
    def bytes_down(self) -> int:
        return self.down.moved

    @property
    def half_closed(self) -> bool:
        """One side has sent its FIN (the other may still be sending)."""
        return self.up.eof or self.down.eof

    @property
    def ended_cleanly(self) -> bool:
        """Both directions ran to their FIN (rather than an abort or a reset)."""
        return self.up.done and self.down.done

    def start(self, early_down: bytes = b"") -> None:
        if early_down:
            # Bytes the proxy sent right behind its reply belong to the app.
            self.down.moved += len(early_down)
            self.down.pending = early_down
            self.down.wait_writable()
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
