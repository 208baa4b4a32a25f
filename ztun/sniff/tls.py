"""TLS ClientHello SNI (RFC 8446 4.1.2, RFC 6066 3) from the first bytes of a TCP flow.

Stateless and bounded: call ``sniff_tls`` with everything received so far (up to
``MAX_TLS_BYTES``); it reassembles a ClientHello split across TLS records and across reads,
and says NEED_MORE until the hello is whole.  The hello body parser is shared with QUIC,
whose CRYPTO frames carry the same handshake message without the record layer.
"""

from __future__ import annotations

from ztun.sniff.result import MAX_TLS_BYTES, Sniffed, SniffResult, Verdict, clean_hostname

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
NAME_TYPE_HOST = 0
RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
MAX_RECORD = 1 << 14  # RFC 8446 5.1: a plaintext fragment is at most 2^14 bytes
_RANDOM = 32
_MAX_SESSION_ID = 32


class _Malformed(Exception):
    """The hello is whole but its structure is wrong."""


class _Reader:
    """Bounds-checked big-endian reads over a bytes-like (no IndexError ever escapes)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"needs {n} bytes at {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> memoryview:
        return self.take(self.uint(len_bytes))


def server_name_from_hello(body: bytes | memoryview) -> str | None:
    """The SNI host name in a ClientHello body (after the 4-byte handshake header).

    Raises ValueError when the body is malformed; None when it names no (valid) host.
    With ECH (RFC 9849) this is the outer, public name -- the only one visible.
    """
    try:
        r = _Reader(body)
        r.take(2 + _RANDOM)  # legacy_version, random
        session_id = r.vector(1)
        if len(session_id) > _MAX_SESSION_ID:
            raise _Malformed("session id too long")
        suites = r.vector(2)
        if not suites or len(suites) % 2:
            raise _Malformed("bad cipher suites")
        if not r.vector(1):
            raise _Malformed("no compression methods")
        if r.remaining() == 0:
            return None  # no extensions at all (TLS 1.0-era hello)
        exts = _Reader(r.vector(2))
        while exts.remaining():
            ext_type = exts.uint(2)
            ext = exts.vector(2)
            if ext_type != EXT_SERVER_NAME:
                continue
            names = _Reader(_Reader(ext).vector(2))
            while names.remaining():
                name_type = names.uint(1)
                name = names.vector(2)
                if name_type == NAME_TYPE_HOST:
                    return clean_hostname(bytes(name))
            return None
        return None
    except _Malformed as exc:
        raise ValueError(str(exc)) from exc


def sniff_tls(data: bytes | bytearray | memoryview, limit: int = MAX_TLS_BYTES) -> SniffResult:
    """SNI from the first bytes of a TLS client flow."""
    view = memoryview(data)[:limit]
    if not view:
        return Verdict.NEED_MORE
    if view[0] != CONTENT_HANDSHAKE:
        return Verdict.NOT_THIS_PROTOCOL
    handshake = bytearray()
    pos = 0
    need: int | None = None  # total handshake bytes once the header is known
    while True:
        if len(view) - pos < RECORD_HEADER:
            if pos == 0 and len(view) >= 2 and view[1] != 3:
                return Verdict.NOT_THIS_PROTOCOL
            return _more(len(data), limit)
        ctype, major = view[pos], view[pos + 1]
        length = int.from_bytes(view[pos + 3 : pos + 5], "big")
        if ctype != CONTENT_HANDSHAKE or major != 3 or length == 0 or length > MAX_RECORD:
            return Verdict.NOT_THIS_PROTOCOL if pos == 0 else Verdict.UNKNOWN
        start = pos + RECORD_HEADER
        handshake += view[start : start + length]
        complete_record = len(view) >= start + length
        if need is None and len(handshake) >= HANDSHAKE_HEADER:
            if handshake[0] != HANDSHAKE_CLIENT_HELLO:
                return Verdict.NOT_THIS_PROTOCOL if pos == 0 else Verdict.UNKNOWN
            need = HANDSHAKE_HEADER + int.from_bytes(handshake[1:4], "big")
            if need > limit:
                return Verdict.UNKNOWN  # a hello larger than we are willing to hold
        if need is not None and len(handshake) >= need:
            try:
                name = server_name_from_hello(memoryview(handshake)[HANDSHAKE_HEADER:need])
            except ValueError:
                return Verdict.UNKNOWN
            return Sniffed(name, "tls") if name else Verdict.UNKNOWN
        if not complete_record:
            return _more(len(data), limit)
        pos = start + length


def _more(received: int, limit: int) -> Verdict:
    return Verdict.NEED_MORE if received < limit else Verdict.UNKNOWN
