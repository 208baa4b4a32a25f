"""Why an outbound could not carry a flow.

The engine turns every `OutboundError` into a reset of the app's connection (or a dropped
UDP flow); the subclasses exist so logs and counters can say *which* hop failed: the
proxy could not be reached, it rejected our credentials, it refused the request, it spoke
something that is not SOCKS5, or the destination itself was unreachable (direct).
"""

from __future__ import annotations

from .socks5_proto import reply_name


class OutboundError(Exception):
    """The outbound could not open the requested TCP stream or UDP association."""


class ProxyUnreachable(OutboundError):
    """No TCP connection to the proxy: refused, timed out, no route, or name not resolved."""


class ProxyTimeout(OutboundError):
    """The proxy accepted the TCP connection but did not finish the handshake in time."""


class ProxyAuthFailed(OutboundError):
    """The proxy accepts none of our methods (0xFF) or rejected the username/password."""


class ProxyProtocolError(OutboundError):
    """The proxy sent something that is not SOCKS5, or hung up in the middle of it."""


class ProxyRefused(OutboundError):
    """The proxy answered the request with a non-zero reply code (RFC 1928 section 6).

    `reply_code` is kept so the engine can map it (e.g. "connection refused" to a TCP RST,
    "host unreachable" to ICMP unreachable); `reason` is its RFC name.
    """

    def __init__(self, reply_code: int, message: str | None = None) -> None:
        self.reply_code = reply_code
        super().__init__(message or f"SOCKS5 reply {reply_code:#04x}: {self.reason}")

    @property
    def reason(self) -> str:
        return reply_name(self.reply_code)


class TargetUnreachable(OutboundError):
    """A direct connection failed; `reply_code` is the SOCKS5 code a proxy would have sent.

    Using the same codes as `ProxyRefused` lets the engine treat both alike.
    """

    def __init__(self, reply_code: int, message: str) -> None:
        self.reply_code = reply_code
        super().__init__(message)

    @property
    def reason(self) -> str:
        return reply_name(self.reply_code)


class Rejected(OutboundError):
    """A rule chose the reject outbound for this flow."""
