"""HTTP/1.x Host header (RFC 9112 3.2) from the first bytes of a TCP flow.

Stateless and bounded like the TLS sniffer: NEED_MORE while the bytes could still be a
request whose Host line has not arrived, NOT_THIS_PROTOCOL as soon as they cannot be one.
The Host line is taken as soon as it is complete -- the rest of the headers may never come
before the client waits for an answer.
"""

from __future__ import annotations

from ztun.sniff.result import MAX_HTTP_BYTES, Sniffed, SniffResult, Verdict, clean_hostname

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
_STARTS = tuple(m + b" " for m in METHODS)
_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")


def _host_value(value: bytes) -> str | None:
    value = value.strip()
    if value.startswith(b"["):
        return None  # an IPv6 literal: nothing to learn
    host, sep, port = value.rpartition(b":")
    if sep and port.isdigit():
        value = host
    return clean_hostname(value)


def sniff_http(data: bytes | bytearray | memoryview, limit: int = MAX_HTTP_BYTES) -> SniffResult:
    """The Host of an HTTP/1.x request from the first bytes of a flow."""
    buf = bytes(memoryview(data)[:limit])
    if not buf.startswith(_STARTS):
        if any(s.startswith(buf) for s in _STARTS):
            return Verdict.NEED_MORE  # "GE" could still become "GET "
        return Verdict.NOT_THIS_PROTOCOL
    lines = buf.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    if not complete:
        return _more(len(data), limit)
    request_line = complete[0].rstrip(b"\r")
    if not request_line.endswith(_VERSIONS) or request_line.count(b" ") < 2:
        return Verdict.NOT_THIS_PROTOCOL
    for raw in complete[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            return Verdict.UNKNOWN  # end of headers and no Host (HTTP/1.0)
        name, sep, value = line.partition(b":")
        if not sep:
            return Verdict.UNKNOWN  # not a header line: give up rather than guess
        if name.strip().lower() == b"host":
            host = _host_value(value)
            return Sniffed(host, "http") if host else Verdict.UNKNOWN
    del tail
    return _more(len(data), limit)


def _more(received: int, limit: int) -> Verdict:
    return Verdict.NEED_MORE if received < limit else Verdict.UNKNOWN
