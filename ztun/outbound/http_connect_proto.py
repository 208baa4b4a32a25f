"""HTTP CONNECT client protocol, sans-IO (after h11): bytes in, events out.

RFC 9110 section 9.3.6: the client asks the proxy to open a tunnel to the
request-target, which for CONNECT is the authority-form `host:port` only (RFC 9112
section 3.2.3); "any 2xx (Successful) response indicates that the sender (and all inbound
proxies) will switch to tunnel mode immediately after the response header section", so
the bytes after the blank line belong to the tunnel (`trailing_data`). Content-Length and
Transfer-Encoding in a 2xx answer to CONNECT are ignored, as the RFC requires. Any other
final status refuses the tunnel. Credentials go in `Proxy-Authorization: Basic` (RFC 7617:
base64 of `user-id ":" password`, UTF-8).

`HttpConnectClient` queues its only request at construction; the adapter
(`http_connect.py`) writes it, feeds whatever comes back to `receive_data()` (down to
one byte at a time; b"" = the proxy closed) and gets one event when the response head is
whole: `TunnelEstablished` or `TunnelRefused`. 1xx interim responses are skipped (RFC 9110
section 15.2: a client must parse them even unasked). Lines may end in a bare LF (RFC 9112
section 2.2 allows a recipient to accept one). A head longer than `MAX_HEAD` is garbage.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass

from .protocol import ClientCore, LocalProtocolError, RemoteProtocolError
from .target import Target, encode_domain

#: Bound on the response head (status line and fields): a proxy that never ends it is
#: not speaking HTTP, and must not make us buffer without end.
MAX_HEAD = 16 * 1024
PROXY_AUTH_REQUIRED = 407
UNAUTHORIZED = 401
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_FIELD_SEPARATOR = b":"
_OBS_FOLD_START = (b" ", b"\t")


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelEstablished:
    """A 2xx final response: the tunnel is open."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TunnelRefused:
    """Any other final status. `proxy_authenticate` is the challenge a 407 carries
    (RFC 9110 section 11.7.1), e.g. ``Basic realm="proxy"``."""

    status: int
    reason: str
    proxy_authenticate: str | None = None


Event = TunnelEstablished | TunnelRefused


class State(enum.Enum):
    AWAIT_RESPONSE = "awaiting the response"
    ESTABLISHED = "established"
    FAILED = "failed"


class HttpConnectClient(ClientCore):
    """One CONNECT to `target`, with Basic credentials when `username` is given."""

    def __init__(
        self, target: Target, *, username: str | None = None, password: str | None = None
    ) -> None:
        super().__init__(encode_request(target, username=username, password=password))
        self.state = State.AWAIT_RESPONSE

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the proxy (b"" = it closed); the final response's event."""
        self._accept(data)
        try:
            while True:
                head = self._take_head()
                if head is None:
                    return []
                status, reason, fields = parse_head(head)
                if 100 <= status < 200:
                    continue  # interim (e.g. 100 Continue): the final response follows
                if 200 <= status < 300:
                    self.state = State.ESTABLISHED
                    return [TunnelEstablished(status, reason)]
                self.state = State.FAILED
                self._buf.clear()
                return [TunnelRefused(status, reason, fields.get("proxy-authenticate"))]
        except RemoteProtocolError:
            self._fail()
            raise

    def _take_head(self) -> bytes | None:
        """The response head up to its blank line (removed from the buffer), or None."""
        # Search from the start each time: heads are small and bounded by MAX_HEAD.
        match = re.search(rb"\r?\n\r?\n", self._buf)
        if match is None:
            if len(self._buf) > MAX_HEAD:
                raise RemoteProtocolError(
                    f"response head longer than {MAX_HEAD} bytes (is this an HTTP proxy?)"
                )
            return None
        if match.start() > MAX_HEAD:
            raise RemoteProtocolError(f"response head longer than {MAX_HEAD} bytes")
        head = bytes(self._buf[: match.start()])
        del self._buf[: match.end()]
        return head


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status code, reason phrase and fields (lower-cased names) of a response head."""
    lines = re.split(rb"\r?\n", head)
    status_line = lines[0]
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        shown = status_line[:60].decode("latin-1")
        raise RemoteProtocolError(f"status line {shown!r} is not HTTP/1.x (is this an HTTP proxy?)")
    status = int(match.group(3))
    reason = (match.group(4) or b"").decode("latin-1").strip()
    fields: dict[str, str] = {}
    last: str | None = None
    for line in lines[1:]:
        if line.startswith(_OBS_FOLD_START) and last is not None:
            # obs-fold (RFC 9112 section 5.2): a user agent replaces it with one SP.
            fields[last] += " " + line.strip().decode("latin-1")
            continue
        name, sep, value = line.partition(_FIELD_SEPARATOR)
        if not sep or not name.strip():
            shown = line[:60].decode("latin-1")
            raise RemoteProtocolError(f"response field {shown!r} has no name")
        last = name.strip().decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        fields[last] = f"{fields[last]}, {text}" if last in fields else text
    return status, reason, fields


def authority(target: Target) -> str:
    """The authority-form of `target` (RFC 9112 section 3.2.3): IPv6 in brackets, names
    as IDNA ASCII."""
    if target.ip is None:
        try:
            host = encode_domain(target.host).decode("ascii")
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
    elif target.ip.version == 6:
        host = f"[{target.ip}]"
    else:
        host = str(target.ip)
    return f"{host}:{target.port}"


def basic_credentials(username: str, password: str) -> str:
    """`Basic <base64(user-id ":" password)>` (RFC 7617 section 2, UTF-8 per 2.1)."""
    if ":" in username:
        raise LocalProtocolError("a Basic user-id cannot contain ':' (RFC 7617 section 2)")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def encode_request(
    target: Target, *, username: str | None = None, password: str | None = None
) -> bytes:
    """The CONNECT request head, ending in the blank line."""
    where = authority(target)
    lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}"]
    if username is not None:
        lines.append(f"Proxy-Authorization: {basic_credentials(username, password or '')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
