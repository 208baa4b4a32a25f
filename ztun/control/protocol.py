"""The control protocol, sans-IO: one JSON object per line each way (docs/control.md).

A client writes a request line, the server answers with one reply line, and the next
request may follow on the same connection:

    -> {"cmd": "flows", "proto": "tcp"}
    <- {"ok": true, "result": [...]}
    <- {"ok": false, "error": "no flow 17"}

`LineReader` cuts a byte stream into lines (bounded: a peer that never sends a newline
cannot make the server buffer without end); `parse_request` checks a line and names what
is wrong; `reply`/`failure` encode the answers. Transports (a Unix socket, a Windows named
pipe, a worker's socketpair) only move these bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: The commands a ztun answers; each takes the arguments documented in docs/control.md.
COMMANDS = ("status", "flows", "close", "reload", "metrics")
#: A request line longer than this is refused (a request is a few hundred bytes; the
#: parent's reload to its workers carries the config file's text).
MAX_REQUEST = 1 << 20
#: Replies can be long (every open flow): a client accepts up to this much per line.
MAX_REPLY = 256 << 20


class ProtocolError(Exception):
    """A request line that is not a request: the reply says what is wrong."""


@dataclass(frozen=True, slots=True)
class Request:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return encode({"cmd": self.cmd, **self.args})


class LineReader:
    """Bytes in, complete lines out; a line longer than `limit` raises ProtocolError."""

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._limit or any(len(line) > self._limit for line in lines):
            self._buffer.clear()
            raise ProtocolError(f"line longer than {self._limit} bytes")
        return lines

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line (at EOF: a request cut short)."""
        return len(self._buffer)


def encode(message: dict[str, Any]) -> bytes:
    # Compact and ASCII-only: one line, whatever the domain names contain.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def parse_request(line: bytes) -> Request:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON object: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError('a request is a JSON object like {"cmd": "status"}')
    cmd = message.pop("cmd", None)
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown cmd {cmd!r}; known: {', '.join(COMMANDS)}")
    return Request(cmd, message)


def reply(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def failure(error: str) -> bytes:
    return encode({"ok": False, "error": error})


def parse_reply(line: bytes) -> tuple[bool, Any]:
    """(True, result) or (False, error text); ProtocolError if it is not a reply."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
        raise ProtocolError(f"reply without ok: {line[:200]!r}")
    if message["ok"]:
        return True, message.get("result")
    return False, str(message.get("error", "unknown error"))
