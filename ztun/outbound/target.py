"""Where a flow goes: an IP literal or a domain name, and a port.

Domains are carried as names, never resolved here: with fake-IP DNS the engine knows the
name the app asked for, and the proxy (not ztun, whose own lookups may be routed back into
its TUN) resolves it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PORT = 0xFFFF
#: SOCKS5 carries a domain as a 1-byte length and the name (RFC 1928 section 5).
MAX_DOMAIN_LEN = 255


def encode_domain(name: str) -> bytes:
    """The wire form of a domain: ASCII as is, anything else through IDNA."""
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        try:
            return name.encode("idna")
        except UnicodeError as exc:
            raise ValueError(f"domain {name!r} cannot be encoded with IDNA: {exc}") from None


IPV4_OR_V6 = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True, slots=True)
class Target:
    """A destination host (IP literal or domain) and port; hashable, IPs in canonical form.

    Port 0 is allowed: SOCKS5 uses it for "unknown" in UDP ASSOCIATE and in replies.
    """

    host: str
    port: int
    ip: IPAddress | None = field(init=False, repr=False, compare=False)
    #: For a name ztun sniffed from the app's first bytes: the (real, not fake-IP)
    #: address the app connected to -- what socks4://, which cannot carry a name, is sent.
    seen_ip: IPAddress | None = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"target port {self.port!r} out of range 0-{MAX_PORT}")
        host = self.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ip: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            # One spelling per address, so Targets compare and hash as addresses do.
            object.__setattr__(self, "host", str(ip))
        else:
            _check_domain(self.host)
        object.__setattr__(self, "ip", ip)

    @classmethod
    def from_ip(cls, address: bytes | str | IPAddress, port: int) -> Target:
        """Build from raw 4/16 address bytes (as the stack has them) or an address object."""
        ip = address if isinstance(address, IPV4_OR_V6) else ipaddress.ip_address(address)
        if not isinstance(port, int) or not 0 <= port <= MAX_PORT:
            raise ValueError(f"target port {port!r} out of range 0-{MAX_PORT}")
        # Per new connection: skip __post_init__'s parse of the text we would make here.
        target = object.__new__(cls)
        object.__setattr__(target, "host", str(ip))
        object.__setattr__(target, "port", port)
        object.__setattr__(target, "ip", ip)
        object.__setattr__(target, "seen_ip", None)
        return target

    @property
    def is_domain(self) -> bool:
        return self.ip is None

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET / AF_INET6 for IP literals, AF_UNSPEC for a domain."""
        if self.ip is None:
            return socket.AF_UNSPEC
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6

    def __str__(self) -> str:
        if self.ip is not None and self.ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _check_domain(name: str) -> None:
    if not name:
        raise ValueError("target host is empty")
    if any(ch.isspace() or not ch.isprintable() or ch in "/[]@" for ch in name):
        raise ValueError(f"target host {name!r} is neither an IP address nor a domain name")
    if len(encode_domain(name)) > MAX_DOMAIN_LEN:
        raise ValueError(f"target domain {name[:40]!r}... longer than {MAX_DOMAIN_LEN} bytes")
