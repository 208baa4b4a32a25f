"""How payloads appear in a canonical trace: length, hash, first bytes -- or decoded.

Raw payloads are shown as ``N bytes #<sha256 prefix> <first bytes hex>``: the hash catches
any change, the first bytes tell a reader what it is. Two protocols are decoded instead,
because their bytes carry ephemeral values that a hash would turn into noise and a
reader wants to see anyway:

* SOCKS5 (RFC 1928/1929) on the profile's SOCKS ports: greeting, method, auth, request
  and reply, with addresses and ports going through the same canonical names as the
  packet headers (a reply's BND.PORT becomes ``P4``, the UDP relay port the same token as
  the UDP datagrams that follow); after the handshake the stream is raw data.
* DNS on the profile's DNS ports (and inside SOCKS5 UDP datagrams): id, question,
  answers, rcode -- the hash stays, so any byte change still shows.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "FIRST_BYTES",
    "HASH_CHARS",
    "Names",
    "RawStream",
    "SocksClientStream",
    "SocksServerStream",
    "SocksSession",
    "Stream",
    "describe_bytes",
    "describe_dns",
    "describe_socks_udp",
]

HASH_CHARS = 8
"""Hex digits of SHA-256 shown: 32 bits, plenty to tell two payloads apart in a diff."""

FIRST_BYTES = 8
"""Leading payload bytes shown in hex, so a reader recognises the content."""

SOCKS_VERSION, AUTH_VERSION = 5, 1
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4
METHOD_NAMES = {0: "no-auth", 1: "gssapi", 2: "username", 0xFF: "no-acceptable"}
COMMAND_NAMES = {1: "CONNECT", 2: "BIND", 3: "UDP-ASSOCIATE"}
CMD_UDP_ASSOCIATE = 3
REPLY_NAMES = {
    0: "succeeded",
    1: "general-failure",
    2: "not-allowed",
    3: "network-unreachable",
    4: "host-unreachable",
    5: "connection-refused",
    6: "ttl-expired",
    7: "command-not-supported",
    8: "address-type-not-supported",
}
METHOD_USERNAME = 2


class Names(Protocol):
    """Canonical names for what a payload mentions (the normaliser's mapper)."""

    def endpoint(self, addr: str, port: int) -> str: ...

    def note_relay(self, addr: str, port: int) -> None: ...


def describe_bytes(data: bytes, *, masked: bool = False) -> str:
    """``N bytes #hash first-bytes`` (``masked``: the length only)."""
    if masked or not data:
        return f"{len(data)} bytes"
    digest = hashlib.sha256(data).hexdigest()[:HASH_CHARS]
    more = ".." if len(data) > FIRST_BYTES else ""
    return f"{len(data)} bytes #{digest} {data[:FIRST_BYTES].hex()}{more}"


# --------------------------------------------------------------------------- SOCKS5 addresses


def _address(data: bytes, at: int) -> tuple[str, int] | None:
    """(address text, offset after DST.PORT) of an RFC 1928 address, or None if incomplete."""
    if len(data) <= at:
        return None
    atyp = data[at]
    if atyp == ATYP_V4:
        end = at + 1 + 4
        text = str(ipaddress.IPv4Address(data[at + 1 : end])) if len(data) >= end else ""
    elif atyp == ATYP_V6:
        end = at + 1 + 16
        text = str(ipaddress.IPv6Address(data[at + 1 : end])) if len(data) >= end else ""
    elif atyp == ATYP_DOMAIN:
        if len(data) < at + 2:
            return None
        end = at + 2 + data[at + 1]
        text = data[at + 2 : end].decode("ascii", "replace") if len(data) >= end else ""
    else:
        raise ValueError(f"address type {atyp}")
    if len(data) < end + 2:
        return None
    return text, end


def _port(data: bytes, at: int) -> int:
    return int(struct.unpack("!H", data[at : at + 2])[0])


# --------------------------------------------------------------------------- streams


class Stream(Protocol):
    """One direction of a TCP connection, fed its new bytes in order."""

    def feed(self, data: bytes) -> list[str]: ...


@dataclass
class RawStream:
    """No protocol: each chunk is described by length and hash."""

    masked: bool = False

    def feed(self, data: bytes) -> list[str]:
        return [describe_bytes(data, masked=self.masked)] if data else []


@dataclass
class SocksSession:
    """What both directions of one SOCKS5 connection need to know about each other."""

    names: Names
    server_addr: str
    masked: bool = False
    method: int | None = None
    command: int | None = None


Parser = Callable[[bytes], tuple[str, int] | None]
"""Parses one message at the start of the buffer: (text, length) or None if incomplete."""


@dataclass
class _SocksStream:
    session: SocksSession
    buffer: bytes = b""
    raw: bool = False
    steps: list[Parser] = field(default_factory=list)

    def feed(self, data: bytes) -> list[str]:
        items: list[str] = []
        if self.raw:
            return [describe_bytes(data, masked=self.session.masked)] if data else []
        self.buffer += data
        while self.buffer and not self.raw:
            step = self._next_step()
            if step is None:
                self.raw = True
                break
            try:
                parsed = step(self.buffer)
            except (ValueError, IndexError) as exc:
                items.append(f"not socks5 ({exc}):")
                self.raw = True
                break
            if parsed is None:
                items.append(f"socks5 (partial message, {len(self.buffer)} bytes so far)")
                return items
            text, used = parsed
            items.append(f"socks5 {text}")
            self.buffer = self.buffer[used:]
            self.steps.pop(0)
        if self.raw and self.buffer:
            items.append(describe_bytes(self.buffer, masked=self.session.masked))
            self.buffer = b""
        return items

    def _next_step(self) -> Parser | None:
        return self.steps[0] if self.steps else None


class SocksClientStream(_SocksStream):
    """Client to server: greeting, [RFC 1929 auth], request; then data."""

    def __init__(self, session: SocksSession) -> None:
        super().__init__(session)
        self.steps = [self._greeting, self._auth_or_request]

    def _greeting(self, data: bytes) -> tuple[str, int] | None:
        if data[0] != SOCKS_VERSION:
            raise ValueError(f"version {data[0]}")
        if len(data) < 2 or len(data) < 2 + data[1]:
            return None
        methods = [METHOD_NAMES.get(m, f"0x{m:02x}") for m in data[2 : 2 + data[1]]]
        return f"greeting [{','.join(methods)}]", 2 + data[1]

    def _auth_or_request(self, data: bytes) -> tuple[str, int] | None:
        if data[0] == AUTH_VERSION:
            self.steps.insert(1, self._request)
            return self._auth(data)
        return self._request(data)

    def _auth(self, data: bytes) -> tuple[str, int] | None:
        if len(data) < 2:
            return None
        ulen = data[1]
        if len(data) < 3 + ulen:
            return None
        plen = data[2 + ulen]
        if len(data) < 3 + ulen + plen:
            return None
        user = data[2 : 2 + ulen].decode("utf-8", "replace")
        # The password is a test credential, but a trace is no place for one.
        return f"auth user {user!r} password ({plen} bytes)", 3 + ulen + plen

    def _request(self, data: bytes) -> tuple[str, int] | None:
        if data[0] != SOCKS_VERSION:
            raise ValueError(f"version {data[0]} in request")
        if len(data) < 4:
            return None
        parsed = _address(data, 3)
        if parsed is None:
            return None
        addr, end = parsed
        command = data[1]
        self.session.command = command
        name = COMMAND_NAMES.get(command, f"command-{command}")
        where = self.session.names.endpoint(addr, _port(data, end))
        return f"request {name} {where}", end + 2


class SocksServerStream(_SocksStream):
    """Server to client: method selection, [auth status], reply; then data."""

    def __init__(self, session: SocksSession) -> None:
        super().__init__(session)
        self.steps = [self._method, self._auth_or_reply]

    def _method(self, data: bytes) -> tuple[str, int] | None:
        if data[0] != SOCKS_VERSION:
            raise ValueError(f"version {data[0]}")
        if len(data) < 2:
            return None
        self.session.method = data[1]
        return f"method {METHOD_NAMES.get(data[1], f'0x{data[1]:02x}')}", 2

    def _auth_or_reply(self, data: bytes) -> tuple[str, int] | None:
        if data[0] == AUTH_VERSION and self.session.method == METHOD_USERNAME:
            if len(data) < 2:
                return None
            self.steps.insert(1, self._reply)
            return f"auth status {'ok' if data[1] == 0 else f'failed ({data[1]})'}", 2
        return self._reply(data)

    def _reply(self, data: bytes) -> tuple[str, int] | None:
        if data[0] != SOCKS_VERSION:
            raise ValueError(f"version {data[0]} in reply")
        if len(data) < 4:
            return None
        parsed = _address(data, 3)
        if parsed is None:
            return None
        addr, end = parsed
        port = _port(data, end)
        code = data[1]
        if self.session.command == CMD_UDP_ASSOCIATE and code == 0:
            relay = addr
            if ipaddress.ip_address(addr).is_unspecified:
                relay = self.session.server_addr  # RFC 1928 practice: "the proxy itself"
            self.session.names.note_relay(relay, port)
        name = REPLY_NAMES.get(code, f"reply-{code}")
        return f"reply {name} bound {self.session.names.endpoint(addr, port)}", end + 2


# --------------------------------------------------------------------------- datagrams


def describe_dns(data: bytes) -> str:
    """``dns query 0x1234 A probe.test.`` / ``dns response ... -> A 10.9.8.7 ttl 0``."""
    from scapy.layers.dns import DNS

    try:
        msg = DNS(data)
        questions = [
            f"{q.sprintf('%qtype%')} {q.qname.decode('ascii', 'replace')}" for q in (msg.qd or [])
        ]
        text = f"dns {'response' if msg.qr else 'query'} 0x{msg.id:04x} {', '.join(questions)}"
        if msg.qr:
            answers = []
            for rr in msg.an or []:
                rdata = rr.rdata
                value = rdata.decode("ascii", "replace") if isinstance(rdata, bytes) else rdata
                answers.append(f"{rr.sprintf('%type%')} {value} ttl {rr.ttl}")
            text += f" -> {'; '.join(answers) or 'no answer'}, rcode {msg.sprintf('%rcode%')}"
        return text
    except Exception as exc:  # scapy raises many kinds on garbage; the hash still shows it
        return f"not dns ({type(exc).__name__})"


def describe_socks_udp(
    data: bytes, names: Names, dns_ports: frozenset[int], masked: bool = False
) -> str:
    """An RFC 1928 section 7 datagram: ``socks5-udp frag 0 to/from ADDR.PORT: <payload>``."""
    if len(data) < 4:
        return f"socks5-udp (truncated) {describe_bytes(data, masked=masked)}"
    try:
        parsed = _address(data, 3)
    except ValueError as exc:
        return f"socks5-udp ({exc}) {describe_bytes(data, masked=masked)}"
    if parsed is None:
        return f"socks5-udp (truncated) {describe_bytes(data, masked=masked)}"
    addr, end = parsed
    port = _port(data, end)
    inner = data[end + 2 :]
    text = f"socks5-udp frag {data[2]} {names.endpoint(addr, port)}: "
    text += describe_bytes(inner, masked=masked)
    if port in dns_ports and not masked:
        text += f" {describe_dns(inner)}"
    return text
