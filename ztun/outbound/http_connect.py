"""HTTP CONNECT outbound: the asyncio adapter around `http_connect_proto.HttpConnectClient`.

TCP only (RFC 9110 section 9.3.6 tunnels a byte stream): `open_udp` refuses as a reject
rule would, and UDP follows `--udp-proxy` or a group's UDP-capable member. Refusals are
reported with the status the proxy gave (``http proxy 10.0.0.2:3128 answered 407 Proxy
Authentication Required``).
"""

from __future__ import annotations

from .base import DatagramHandler, TcpStream, UdpAssociation
from .dialer import ProxyOutboundBase
from .errors import ProxyAuthFailed, ProxyRefused, TargetUnsupported, UdpNotSupported
from .http_connect_proto import (
    PROXY_AUTH_REQUIRED,
    UNAUTHORIZED,
    HttpConnectClient,
    TunnelEstablished,
    TunnelRefused,
    basic_credentials,
)
from .protocol import LocalProtocolError
from .socks5_proto import Reply
from .target import Target

#: Statuses a proxy gives when *it* could not reach the target (tinyproxy sends 500
#: "Unable to connect", squid 503 for a refused connect, 504 for a timeout): the proxy
#: itself works, so they do not count against its health.
_TARGET_STATUSES = {
    500: Reply.HOST_UNREACHABLE,
    502: Reply.HOST_UNREACHABLE,
    503: Reply.HOST_UNREACHABLE,
    504: Reply.HOST_UNREACHABLE,
}


class HttpConnectOutbound(ProxyOutboundBase):
    """Open TCP streams through one HTTP proxy with CONNECT (`http://[user:pass@]host:port`)."""

    def _check_url(self) -> None:
        if self.url.scheme != "http":
            raise LocalProtocolError("not an http:// URL")
        if self.url.username is not None:
            basic_credentials(self.url.username, self.url.password or "")

    async def open_tcp(self, target: Target) -> TcpStream:
        try:
            client = HttpConnectClient(
                target, username=self.url.username, password=self.url.password
            )
        except LocalProtocolError as exc:
            raise TargetUnsupported(f"{self.url.label}: {exc}") from None

        def settle(event: object) -> TunnelEstablished | None:
            if isinstance(event, TunnelEstablished):
                return event
            if isinstance(event, TunnelRefused):
                raise self._refusal(event, target)
            return None

        return await self._tunnel(client, settle, protocol="HTTP")

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        raise UdpNotSupported(f"{self.url.label} carries no UDP (HTTP CONNECT is TCP only)")

    def _refusal(self, event: TunnelRefused, target: Target) -> Exception:
        answered = f"{self.url.label} answered {event.status} {event.reason}".rstrip()
        # tinyproxy 1.11 answers wrong credentials with 401, not 407: both say "not you".
        if event.status in (PROXY_AUTH_REQUIRED, UNAUTHORIZED):
            if self.url.username is None:
                wants = f" ({event.proxy_authenticate})" if event.proxy_authenticate else ""
                return ProxyAuthFailed(
                    f"{answered}{wants}: give credentials, http://USER:PASS@HOST:PORT"
                )
            return ProxyAuthFailed(f"{answered}: username {self.url.username!r} not accepted")
        code = _TARGET_STATUSES.get(event.status)
        if code is not None:
            return ProxyRefused(code, f"{answered} to CONNECT {target}", target_fault=True)
        return ProxyRefused(
            Reply.NOT_ALLOWED, f"{answered} to CONNECT {target}", target_fault=False
        )
