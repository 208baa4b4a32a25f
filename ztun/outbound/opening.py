"""Opening a connection by callbacks, and the coroutine face of it.

A new TCP flow through a proxy used to be a Task per flow awaiting a chain of coroutines
(group -> member -> protocol -> dialer), each await a frame resumed through a future.
Per connection that machinery cost about as much CPU as the handshake it waited for
(issue 17 item 4), so the outbounds that can (SOCKS5, members and groups, the dialer)
open by callbacks: ``start_tcp(target, on_done)`` returns an `Opening` at once and calls
``on_done(stream, None)`` or ``on_done(None, error)`` later, from a loop callback.

The contract every opener keeps:
- `on_done` is called exactly once, never from inside the call that started the
  opening (a failure found at once is delivered on the next loop pass), and never after
  `Opening.cancel()`;
- after `cancel()` the opener owns what it made and closes it (sockets, half-done
  handshakes): the caller forgets the opening;
- an error in the opener's own step (EMFILE making a socket, a bug) goes to `on_done` as
  the flow's error, as it did through the awaits; what `on_done` raises is not the
  opener's to catch (swallowed, a bug downstream would leave its flow hanging unseen).

`start_tcp` opens through any outbound: by its callbacks when it has them, else by a
Task around its ``open_tcp`` coroutine (direct, HTTP CONNECT, SOCKS4, test doubles):
one flow-setup path for the engine either way. `until_done` is the other direction: the
``open_tcp`` coroutine of a callback opener (what `ztun.dnsflow`, the prober and tests
await).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from .base import TcpStream
from .target import Target

R = TypeVar("R")

#: on_done(result, None) or on_done(None, error): how an opening ends.
Done = Callable[[R | None, BaseException | None], None]


class Opening(Protocol):
    def cancel(self) -> None:
        """Stop opening; `on_done` is not called (a no-op once it was)."""
        ...


def start_tcp(outbound: object, target: Target, on_done: Done[TcpStream]) -> Opening:
    """Open a TCP stream to `target` through `outbound`: by its own callbacks
    (``start_tcp``) when it has them, else by a Task awaiting its ``open_tcp``."""
    start = getattr(outbound, "start_tcp", None)
    if start is not None:
        opening: Opening = start(target, on_done)
        return opening
    return TaskOpening(outbound.open_tcp(target), on_done, dispose=release_stream)  # type: ignore[attr-defined]


def release_stream(stream: TcpStream) -> None:
    """Dispose of a stream nobody will use: close its socket, give back its flow count."""
    stream.sock.close()
    stream.release()


class TaskOpening:
    """An `Opening` for a coroutine: a Task that awaits it and reports how it ended."""

    __slots__ = ("_dispose", "_on_done", "_task")

    def __init__(
        self,
        coro: Coroutine[Any, Any, R],
        on_done: Done[R],
        *,
        dispose: Callable[[R], None] | None = None,
    ) -> None:
        self._on_done: Done[Any] | None = on_done
        self._dispose: Callable[[Any], None] | None = dispose
        self._task = asyncio.get_running_loop().create_task(self._run(coro))

    async def _run(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await coro
        except Exception as exc:  # delivered: the caller decides what it means
            self._finish(None, exc)
            return
        self._finish(result, None)

    def _finish(self, result: object, exc: BaseException | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:  # cancelled after the coroutine had finished
            if result is not None and self._dispose is not None:
                self._dispose(result)
            return
        on_done(result, exc)

    def cancel(self) -> None:
        if self._on_done is not None:
            self._on_done = None
            self._task.cancel()


async def until_done(
    start: Callable[[Done[R]], Opening], *, dispose: Callable[[R], None] | None = None
) -> R:
    """Await what `start(on_done)` opens. A result that arrives for a caller cancelled in
    the same loop pass goes to `dispose` (close it) rather than being leaked."""
    future: asyncio.Future[R] = asyncio.get_running_loop().create_future()

    def on_done(result: R | None, exc: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            if result is not None and dispose is not None:
                dispose(result)
        elif exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    opening = start(on_done)
    try:
        return await future
    except asyncio.CancelledError:
        if future.done() and not future.cancelled() and future.exception() is None:
            if dispose is not None:
                dispose(future.result())
        else:
            opening.cancel()
        raise
