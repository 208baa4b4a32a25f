"""The control socket's asyncio adapter: bytes between a transport and `answer`.

On Linux and macOS the socket is a Unix stream socket created with mode 0600 (bound
under a umask that leaves the owner alone, so there is no moment when others could
connect); a socket file left by a killed ztun is replaced, one a live ztun answers on is
not. On Windows the endpoint is a named pipe (`ztun.control.winpipe`). A worker under
`--workers N` serves the same protocol to its parent over a socketpair
(`serve_channel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import sys
from pathlib import Path

from .handler import Backend, answer
from .protocol import LineReader, ProtocolError, failure

log = logging.getLogger("ztun")

READ_SIZE = 65536
SOCKET_MODE = 0o600
DIR_MODE = 0o755


class ControlSocketBusy(OSError):
    """Another live instance answers on the path: two ztuns must not share one."""


async def serve_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend
) -> None:
    """Answer requests on one connection until the peer closes it."""
    lines = LineReader()
    try:
        while data := await reader.read(READ_SIZE):
            try:
                batch = lines.feed(data)
            except ProtocolError as exc:
                writer.write(failure(str(exc)))
                break
            for line in batch:
                writer.write(await answer(backend, line))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away mid-reply: nothing to tell it
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600; a stale file there is replaced."""
    target = Path(path)
    target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if os.path.lexists(path):
        _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)  # the file is born 0600
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, SOCKET_MODE)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ControlSocketBusy(errno.EEXIST, f"{path} exists and is not a socket")
    if not remove_if_stale(path):
        raise ControlSocketBusy(
            errno.EADDRINUSE,
            f"another ztun answers on {path}; stop it or give this one --control PATH",
        )


def remove_if_stale(path: str) -> bool:
    """Remove the socket file at `path` if nobody answers on it (a killed ztun's, or one
    already gone); False when a live instance does."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        probe.close()
    return False


class ControlServer:
    """Serves `backend` on a control endpoint and on any channels handed to it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.path: str | None = None
        self._server: asyncio.Server | None = None
        self._pipe: object | None = None
        self._inode: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, path: str) -> None:
        """Start serving at `path` (raises ControlSocketBusy, OSError)."""
        if sys.platform == "win32":
            from .winpipe import PipeServer

            pipe = PipeServer(path, self.backend, asyncio.get_running_loop())
            pipe.start()
            self._pipe = pipe
        else:
            sock = bind_unix(path)
            self._inode = os.stat(path).st_ino
            self._server = await asyncio.start_unix_server(self._on_client, sock=sock)
        self.path = path

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await serve_stream(reader, writer, self.backend)
        finally:
            self._tasks.discard(task)

    def serve_channel(self, sock: socket.socket) -> None:
        """Answer requests arriving on `sock` (a worker's end of its parent's socketpair)."""

        async def run() -> None:
            reader, writer = await asyncio.open_connection(sock=sock)
            await serve_stream(reader, writer, self.backend)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            path = self.path
            # Only our own file: a successor may already have replaced it.
            with contextlib.suppress(OSError):
                if path is not None and os.stat(path).st_ino == self._inode:
                    os.unlink(path)
        if self._pipe is not None:
            self._pipe.stop()  # type: ignore[attr-defined]
            self._pipe = None
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        """`close`, then wait until every connection's task has ended."""
        self.close()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks)
