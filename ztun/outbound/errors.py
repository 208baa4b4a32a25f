"""Why an outbound could not carry a flow.

The engine turns every `OutboundError` into a reset of the app's connection (or a dropped
UDP flow); the subclasses exist so logs and counters can say *which* hop failed: the
proxy could not be reached, it rejected our credentials, it refused the request, it spoke
something that is not its protocol, or the destination itself was unreachable (direct).
Proxy health (`health.Health`) reads the same classes: a proxy that answers "the target
refused" is alive, one that cannot be reached is not.
"""

from __future__ import annotations

from .socks5_proto import Reply, reply_name

#: Reply codes that say the *target* failed, not the proxy (RFC 1928 section 6): a proxy
#: that sends one of them is working.
TARGET_REPLIES = frozenset(
    {
        Reply.NETWORK_UNREACHABLE,
        Reply.HOST_UNREACHABLE,
        Reply.CONNECTION_REFUSED,
        Reply.TTL_EXPIRED,
    }
)


class OutboundError(Exception):
    """The outbound could not open the requested TCP stream or UDP association."""


class ProxyUnreachable(OutboundError):
    """No TCP connection to the proxy: refused, timed out, no route, or name not resolved.

    `refused` is set when the proxy's host answered the connect with a reset
    (ECONNREFUSED): nothing listens there, which health counts as a certain failure.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ProxyTimeout(OutboundError):
    """The proxy accepted the TCP connection but did not finish the handshake in time."""


class ProxyAuthFailed(OutboundError):
    """The proxy accepts none of our methods (0xFF) or rejected the username/password."""


class ProxyProtocolError(OutboundError):
    """The proxy sent something that is not SOCKS5, or hung up in the middle of it."""


class ProxyRefused(OutboundError):
    """The proxy answered the request with a refusal (a SOCKS5 reply code, a SOCKS4 0x5B,
    an HTTP status).

    `reply_code` is the SOCKS5 code (RFC 1928 section 6) closest to what the proxy said,
    so the engine can map every protocol's refusals alike (e.g. "connection refused" to a
    TCP RST); `reason` is its RFC name. `target_fault` says whether the refusal blames the
    target (then the proxy itself is healthy); by default it follows the reply code.
    """

    def __init__(
        self, reply_code: int, message: str | None = None, *, target_fault: bool | None = None
    ) -> None:
        self.reply_code = reply_code
        self.target_fault = reply_code in TARGET_REPLIES if target_fault is None else target_fault
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


class TargetUnsupported(OutboundError):
    """The outbound cannot name this target at all (socks4:// and an IPv6 address or a
    domain); the proxy was not asked, so its health is not concerned."""


class Rejected(OutboundError):
    """A rule chose the reject outbound for this flow."""


class UdpNotSupported(Rejected):
    """The outbound carries TCP only (HTTP CONNECT, SOCKS4): UDP is refused, as a rule
    rejecting it would (the app gets ICMP unreachable)."""


class NoMemberUp(Rejected):
    """No member of a proxy group is up, and the last try failed too: the group fails
    closed. A Rejected, so UDP gets ICMP unreachable as for a reject rule."""
