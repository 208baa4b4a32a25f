"""The client side of the control protocol: the CLI's (blocking) and the parent's (async).

`ControlClient` connects to one instance's endpoint -- a Unix socket, or on Windows a named
pipe, which Python opens as a file -- and makes calls; `Channel` is the parent of
`--workers N` calling one worker over its socketpair, one request at a time.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from .protocol import MAX_REPLY, ProtocolError, Request, parse_reply


class ControlError(Exception):
    """The instance answered with an error (its text is the message)."""


class ControlUnreachable(OSError):
    """Nobody answers on the endpoint (not running, or a stale socket file)."""


class ControlClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pipe: Any = None
        try:
            if sys.platform == "win32":
                self._pipe = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(path)
                except BaseException:
                    sock.close()
                    raise
                self._sock = sock
        except OSError as exc:
            raise ControlUnreachable(exc.errno, f"{path}: {exc.strerror or exc}") from exc
        self._buffer = bytearray()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._pipe is not None:
            self._pipe.close()

    def call(self, cmd: str, **args: Any) -> Any:
        """Send one request and return its result; ControlError carries a refusal."""
        self._send(Request(cmd, args).encode())
        ok, value = parse_reply(self._readline())
        if not ok:
            raise ControlError(value)
        return value

    def _send(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            self._pipe.write(data)

    def _recv(self) -> bytes:
        if self._sock is not None:
            return self._sock.recv(65536)
        data: bytes = self._pipe.read(65536)
        return data

    def _readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_REPLY:
                raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
            data = self._recv()
            if not data:
                raise ConnectionError(f"{self.path}: closed without a reply")
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line


class Channel:
    """The parent's line to one worker: requests in order, one reply each."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    @classmethod
    async def over(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_REPLY)
        return cls(reader, writer)

    async def call(self, request: Request) -> tuple[bool, Any]:
        async with self._lock:
            self.writer.write(request.encode())
            await self.writer.drain()
            line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("the worker closed its control channel")
        return parse_reply(line)

    def close(self) -> None:
        self.writer.close()
