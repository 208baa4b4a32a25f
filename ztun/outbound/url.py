"""Outbound URLs: `socks5://[user[:pass]@]host:port` (also `socks5h://`),
`socks4://[user@]host:port`, `socks4a://[user@]host:port`, `http://[user[:pass]@]host:port`
(HTTP CONNECT), `direct://`, `reject://`.

Parsed by hand rather than with `urllib.parse` so each mistake gets its own message
("port missing", "IPv6 address must be in brackets") and so the password never appears
in one: messages quote the URL with the password replaced by `***`.

`socks5` and `socks5h` behave the same: ztun always hands domain names to the proxy.
curl resolves names locally for `socks5://`, but inside a host whose traffic ztun routes
(and whose DNS it may answer with fake IPs) a local lookup could loop back into ztun; the
`socks5h` spelling is accepted so URLs written for curl work unchanged. For the same
reason `socks4://` never resolves a name locally: it carries IPv4 targets only, and
`socks4a://` (the proxy resolves) carries names.

Credentials are checked against what each protocol can carry: RFC 1929 fields are at most
255 bytes (SOCKS5), SOCKS4 has a user id but no password, and an HTTP Basic user-id must
not contain ':' (RFC 7617 section 2).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from .target import MAX_PORT, Target

Scheme = Literal["socks5", "socks5h", "socks4", "socks4a", "http"]
SCHEMES: tuple[Scheme, ...] = ("socks5", "socks5h", "socks4", "socks4a", "http")
#: The schemes whose proxies carry UDP (SOCKS5 UDP ASSOCIATE); the others are TCP only.
UDP_SCHEMES: frozenset[str] = frozenset({"socks5", "socks5h"})
#: How messages name a proxy of each scheme (socks5h is SOCKS5 on the wire).
_KIND = {"socks5": "socks5", "socks5h": "socks5", "socks4": "socks4", "socks4a": "socks4a"}
_SCHEME_LIST = ", ".join(f"{s}://" for s in SCHEMES)
#: The outbounds that need no address.
Builtin = Literal["direct", "reject"]
BUILTINS: tuple[Builtin, ...] = ("direct", "reject")
#: RFC 1929: ULEN and PLEN are one byte each.
MAX_CREDENTIAL_LEN = 255
_EXAMPLE = "socks5://127.0.0.1:1080"


@functools.lru_cache(maxsize=64)
def _address(host: str, port: int) -> str:
    # Cached: every connection's log and error paths name the proxy, and a Target
    # parses its host each time.
    return str(Target(host, port))


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed proxy URL; `str()` gives it back with the password masked."""

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """`host:port` (IPv6 in brackets), the name error messages use for the proxy."""
        return _address(self.host, self.port)

    @property
    def label(self) -> str:
        """``socks5 proxy 10.0.0.2:1080``: how every message names this proxy."""
        return f"{_KIND.get(self.scheme, self.scheme)} proxy {self.address}"

    @property
    def udp_capable(self) -> bool:
        """True when the protocol carries UDP (SOCKS5); HTTP CONNECT and SOCKS4 do not."""
        return self.scheme in UDP_SCHEMES

    def __str__(self) -> str:
        auth = ""
        if self.username is not None:
            auth = self.username + (":***" if self.password else "") + "@"
        return f"{self.scheme}://{auth}{self.address}"


class _Bad(ValueError):
    """Internal: one problem with the URL, wrapped with the (redacted) URL by the parser."""


def parse_proxy_url(text: str) -> ProxyURL:
    """Parse a proxy URL; raises ValueError("proxy URL '...': <what is wrong>")."""
    try:
        return _parse(text.strip())
    except _Bad as exc:
        raise ValueError(f"proxy URL {redact(text)!r}: {exc}") from None


def parse_outbound_url(text: str) -> ProxyURL | Builtin:
    """A proxy URL, or "direct" / "reject" for `direct://` and `reject://`; else ValueError."""
    scheme, sep, rest = text.strip().partition("://")
    name = scheme.lower()
    if sep and name in SCHEMES:
        return parse_proxy_url(text)
    if sep and name in BUILTINS:
        if rest not in ("", "/"):
            raise ValueError(f"outbound URL {redact(text)!r}: {name}:// takes no address")
        return "direct" if name == "direct" else "reject"
    problem = (
        f"unsupported scheme {scheme!r} (use {_SCHEME_LIST}, direct:// or reject://)"
        if sep
        else "scheme missing (expected e.g. socks5://127.0.0.1:1080 or direct://)"
    )
    raise ValueError(f"outbound URL {redact(text)!r}: {problem}")


def redact(text: str) -> str:
    """`text` with whatever sits between `user:` and the last `@` replaced by `***`."""
    _, sep, rest = text.partition("://")
    if not sep:
        rest = text
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return text[: len(text) - len(rest)] + f"{user}:***@{hostpart}"


def _parse(text: str) -> ProxyURL:
    scheme_text, sep, rest = text.partition("://")
    if not sep:
        raise _Bad(f"scheme missing (expected e.g. {_EXAMPLE})")
    scheme = scheme_text.lower()
    if scheme not in SCHEMES:
        raise _Bad(f"unsupported scheme {scheme_text!r} (use {_SCHEME_LIST})")
    netloc, tail = _split_tail(rest)
    if tail not in ("", "/"):
        raise _Bad(f"unexpected {tail!r} after host:port (a proxy URL has no path or query)")
    userinfo, at, hostport = netloc.rpartition("@")
    username, password = _parse_userinfo(userinfo, scheme) if at else (None, None)
    host, port = _parse_hostport(hostport, scheme)
    return ProxyURL(
        scheme=next(s for s in SCHEMES if s == scheme),
        host=host,
        port=port,
        username=username,
        password=password,
    )


def _split_tail(rest: str) -> tuple[str, str]:
    """Split `authority` from whatever follows it (`/`, `?` or `#` start the tail)."""
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:cut], rest[cut:]


def _parse_userinfo(userinfo: str, scheme: str) -> tuple[str, str | None]:
    user_text, colon, pass_text = userinfo.partition(":")
    username = _decode_credential(user_text, "username", scheme)
    if not username:
        raise _Bad("username is empty (drop the '@' to connect without authentication)")
    if scheme in ("socks4", "socks4a"):
        # SOCKS4 sends a USERID, NUL-terminated, and nothing else.
        if colon:
            raise _Bad(f"{scheme}:// has a user id but no password (drop ':' and what follows)")
        if "\0" in username:
            raise _Bad("user id contains a NUL byte, which ends it on the wire (SOCKS4)")
        return username, None
    if scheme == "http" and ":" in username:
        raise _Bad("username must not contain ':' (RFC 7617 section 2, Basic auth)")
    return username, _decode_credential(pass_text, "password", scheme)


def _decode_credential(text: str, what: str, scheme: str) -> str:
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _Bad(f"{what} is not valid UTF-8 after percent-decoding") from None
    if scheme in UDP_SCHEMES and len(value.encode()) > MAX_CREDENTIAL_LEN:
        raise _Bad(f"{what} longer than {MAX_CREDENTIAL_LEN} bytes (RFC 1929 limit)")
    return value


def _parse_hostport(hostport: str, scheme: str) -> tuple[str, int]:
    example_port = 3128 if scheme == "http" else 1080
    if hostport.startswith("["):
        inside, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise _Bad("IPv6 address has no closing ']'")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise _Bad(f"{inside!r} in brackets is not an IPv6 address") from None
        if not after:
            raise _Bad(f"port missing (e.g. {scheme}://[{host}]:{example_port})")
        if not after.startswith(":"):
            raise _Bad(f"unexpected {after!r} after ']' (expected ':PORT')")
        port_text = after[1:]
    else:
        if hostport.count(":") > 1:
            raise _Bad(f"IPv6 address must be in brackets, e.g. {scheme}://[::1]:{example_port}")
        host, colon, port_text = hostport.partition(":")
        if not host:
            raise _Bad(f"host missing (expected e.g. {_EXAMPLE})")
        if not colon:
            raise _Bad(f"port missing (e.g. {scheme}://{host}:{example_port})")
        try:
            host = Target(host, 0).host
        except ValueError as exc:
            raise _Bad(str(exc).replace("target host", "host")) from None
    return host, _parse_port(port_text)


def _parse_port(text: str) -> int:
    if not text:
        raise _Bad("port missing after ':'")
    if not text.isascii() or not text.isdigit():
        raise _Bad(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= MAX_PORT:
        raise _Bad(f"port {port} out of range 1-{MAX_PORT}")
    return port
