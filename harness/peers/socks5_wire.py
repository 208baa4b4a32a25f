"""SOCKS5 (RFC 1928) and username/password auth (RFC 1929) encodings, server side.

Written independently of ``ztun.outbound`` on purpose: the harness is a second opinion on
ztun, so it must not share ztun's parser (a bug there would otherwise agree with itself).
Pure functions over bytes; the asyncio server in :mod:`harness.peers.recording` and the
test clients both use them.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

SOCKS_VERSION = 5
AUTH_VERSION = 1  # RFC 1929 sub-negotiation version
MAX_DOMAIN_LEN = 255


class Method(enum.IntEnum):
    """Authentication methods of RFC 1928 section 3."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    """Request commands of RFC 1928 section 4."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddrType(enum.IntEnum):
    """Address types (ATYP) of RFC 1928 section 4."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """Reply codes (REP) of RFC 1928 section 6."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


def command_name(code: int) -> str:
    """``"CONNECT"``, ``"UDP ASSOCIATE"``... or ``"0x2a"`` for an unknown code (logged as is)."""
    try:
        return Command(code).name.replace("_", " ")
    except ValueError:
        return f"0x{code:02x}"


def reply_name(code: int) -> str:
    """Lower-case RFC name of a reply code, for logs and failure messages."""
    try:
        return Reply(code).name.lower().replace("_", " ")
    except ValueError:
        return f"0x{code:02x}"


class Socks5Error(Exception):
    """The peer sent something RFC 1928 does not allow; ``reply`` is what to answer."""

    def __init__(self, message: str, reply: Reply = Reply.GENERAL_FAILURE) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Address:
    """A SOCKS5 address: an IP literal or a domain name, plus a port.

    ``atyp`` keeps what the client actually sent, so the log can tell a domain request
    (socks5h) from a resolved one even when the text looks alike.
    """

    host: str
    port: int
    atyp: AddrType

    @classmethod
    def from_host(cls, host: str, port: int) -> Address:
        """Pick the ATYP a client would use for ``host`` (IP literal or domain)."""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return cls(host, port, AddrType.DOMAIN)
        return cls(str(ip), port, AddrType.IPV4 if ip.version == 4 else AddrType.IPV6)

    def encode(self) -> bytes:
        """ATYP + DST.ADDR + DST.PORT as on the wire."""
        port = struct.pack("!H", self.port)
        if self.atyp is AddrType.IPV4:
            return bytes([AddrType.IPV4]) + ipaddress.IPv4Address(self.host).packed + port
        if self.atyp is AddrType.IPV6:
            return bytes([AddrType.IPV6]) + ipaddress.IPv6Address(self.host).packed + port
        name = self.host.encode("idna")
        if not 0 < len(name) <= MAX_DOMAIN_LEN:
            raise ValueError(f"domain name of {len(name)} bytes cannot be sent in SOCKS5")
        return bytes([AddrType.DOMAIN, len(name)]) + name + port

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}"
            if self.atyp is AddrType.IPV6
            else (f"{self.host}:{self.port}")
        )


def decode_address(data: bytes, offset: int = 0) -> tuple[Address, int]:
    """Decode ATYP/ADDR/PORT at ``offset``; return the address and the offset after it.

    Raises :class:`Socks5Error` (address type not supported) for an unknown ATYP and
    ``IndexError``-free :class:`Socks5Error` for short input.
    """
    if offset >= len(data):
        raise Socks5Error("address truncated")
    atyp = data[offset]
    offset += 1
    if atyp == AddrType.IPV4:
        end = offset + 4
        host = str(ipaddress.IPv4Address(_take(data, offset, 4)))
    elif atyp == AddrType.IPV6:
        end = offset + 16
        host = str(ipaddress.IPv6Address(_take(data, offset, 16)))
    elif atyp == AddrType.DOMAIN:
        length = _take(data, offset, 1)[0]
        if length == 0:
            raise Socks5Error("empty domain name", Reply.GENERAL_FAILURE)
        end = offset + 1 + length
        host = _decode_domain(_take(data, offset + 1, length))
    else:
        raise Socks5Error(f"unknown address type 0x{atyp:02x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    (port,) = struct.unpack("!H", _take(data, end, 2))
    return Address(host, port, AddrType(atyp)), end + 2


def address_length(data: bytes) -> int | None:
    """Bytes an address starting at ``data[0]`` occupies, or None if more are needed.

    Lets a stream reader know how much to wait for before :func:`decode_address`.
    """
    if not data:
        return None
    atyp = data[0]
    if atyp == AddrType.IPV4:
        return 1 + 4 + 2
    if atyp == AddrType.IPV6:
        return 1 + 16 + 2
    if atyp == AddrType.DOMAIN:
        return None if len(data) < 2 else 1 + 1 + data[1] + 2
    raise Socks5Error(f"unknown address type 0x{atyp:02x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)


def _decode_domain(raw: bytes) -> str:
    """ASCII (the usual case) or IDNA; anything else cannot be resolved, so it is refused."""
    for codec in ("ascii", "idna"):
        try:
            return raw.decode(codec)
        except UnicodeError:
            continue
    raise Socks5Error(f"domain name {raw!r} is neither ASCII nor IDNA", Reply.HOST_UNREACHABLE)


def _take(data: bytes, offset: int, length: int) -> bytes:
    chunk = data[offset : offset + length]
    if len(chunk) != length:
        raise Socks5Error("address truncated")
    return chunk


def encode_reply(reply: int, bound: Address | None = None) -> bytes:
    """VER REP RSV BND.ADDR BND.PORT; an unspecified bind address is 0.0.0.0:0."""
    bound = bound or Address("0.0.0.0", 0, AddrType.IPV4)
    return bytes([SOCKS_VERSION, reply, 0]) + bound.encode()


def encode_request(command: Command, target: Address) -> bytes:
    """Client side of a request (used by the harness's own test clients)."""
    return bytes([SOCKS_VERSION, command, 0]) + target.encode()


def encode_greeting(methods: list[Method]) -> bytes:
    """Client greeting VER NMETHODS METHODS."""
    return bytes([SOCKS_VERSION, len(methods), *methods])


def encode_userpass(username: str, password: str) -> bytes:
    """RFC 1929 request VER ULEN UNAME PLEN PASSWD."""
    user, pw = username.encode(), password.encode()
    return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(pw)]) + pw


def encode_udp_datagram(target: Address, payload: bytes, frag: int = 0) -> bytes:
    """RFC 1928 section 7 header (RSV RSV FRAG ATYP ADDR PORT) + data."""
    return b"\x00\x00" + bytes([frag]) + target.encode() + payload


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A decoded SOCKS5 UDP datagram."""

    frag: int
    target: Address
    payload: bytes


def decode_udp_datagram(data: bytes) -> UdpDatagram:
    """Parse the section 7 header; :class:`Socks5Error` on garbage (the server drops it)."""
    if len(data) < 4:
        raise Socks5Error("UDP datagram shorter than its header")
    if data[0] != 0 or data[1] != 0:
        raise Socks5Error("UDP datagram RSV is not zero")
    target, offset = decode_address(data, 3)
    return UdpDatagram(frag=data[2], target=target, payload=data[offset:])
