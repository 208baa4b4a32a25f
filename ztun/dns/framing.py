"""DNS over TCP framing (RFC 1035 4.2.2, RFC 7766): a 2-byte big-endian length prefix.

Remote DNS sends queries to the upstream resolver over TCP through the SOCKS5 proxy
(SOCKS5 UDP is optional for proxies and often broken), so every query is framed and the
reply stream is cut back into messages -- across arbitrary read boundaries.
"""

from __future__ import annotations

MAX_MESSAGE = 0xFFFF
_PREFIX = 2


def frame(message: bytes) -> bytes:
    """``message`` with its 2-byte length prefix; ValueError if it cannot be framed."""
    if not 0 < len(message) <= MAX_MESSAGE:
        raise ValueError(f"DNS message of {len(message)} bytes cannot be framed")
    return len(message).to_bytes(_PREFIX, "big") + message


class TcpDnsDeframer:
    """Feed stream bytes, get whole messages; holds at most one partial message."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Messages completed by ``data`` (possibly none, possibly several)."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= _PREFIX:
            size = int.from_bytes(self._buf[:_PREFIX], "big")
            if size == 0:
                raise ValueError("zero-length DNS message on the TCP stream")
            end = _PREFIX + size
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[_PREFIX:end]))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message (non-zero at EOF means a truncated reply)."""
        return len(self._buf)
