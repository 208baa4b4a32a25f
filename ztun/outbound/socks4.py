"""SOCKS4 / SOCKS4a outbound: the asyncio adapter around `socks4_proto.Socks4Client`.

TCP only: SOCKS4 has no UDP, so `open_udp` refuses as a reject rule would (the group or
`--udp-proxy` carries UDP instead). `socks4://` names IPv4 targets only; a name or an
IPv6 address raises `TargetUnsupported` before the proxy is contacted.
"""

from __future__ import annotations

from .base import DatagramHandler, TcpStream, UdpAssociation
from .dialer import ProxyOutboundBase
from .errors import ProxyAuthFailed, ProxyRefused, TargetUnsupported, UdpNotSupported
from .protocol import LocalProtocolError
from .socks4_proto import Granted, Reply, RequestRejected, Socks4Client, encode_request
from .socks5_proto import Reply as Socks5Reply
from .target import Target

#: Refusals that concern the user id: the proxy checks it with identd (RFC 1413), and
#: failing that is a configuration problem, like a bad password.
_IDENTD_REPLIES = (Reply.IDENTD_UNREACHABLE, Reply.IDENTD_MISMATCH)


class Socks4Outbound(ProxyOutboundBase):
    """Open TCP streams through one SOCKS4 (`socks4://`) or SOCKS4a (`socks4a://`) proxy."""

    def _check_url(self) -> None:
        if self.url.scheme not in ("socks4", "socks4a"):
            raise LocalProtocolError("not a socks4:// or socks4a:// URL")
        encode_request(Target("0.0.0.1", 1), user_id=self.user_id)

    @property
    def socks4a(self) -> bool:
        return self.url.scheme == "socks4a"

    @property
    def user_id(self) -> str:
        return self.url.username or ""

    async def open_tcp(self, target: Target) -> TcpStream:
        try:
            client = Socks4Client(target, user_id=self.user_id, socks4a=self.socks4a)
        except LocalProtocolError as exc:
            raise TargetUnsupported(f"{self.url.label}: {exc}") from None

        def settle(event: object) -> Granted | None:
            if isinstance(event, Granted):
                return event
            if isinstance(event, RequestRejected):
                message = (
                    f"{self.url.label} refused CONNECT {target}: {event.reason} "
                    f"({event.reply_code})"
                )
                if event.reply_code in _IDENTD_REPLIES:
                    raise ProxyAuthFailed(message)
                # 91 says "rejected or failed" without telling which: the proxy answered,
                # so it is not held against the proxy's health.
                raise ProxyRefused(
                    Socks5Reply.GENERAL_FAILURE,
                    message,
                    target_fault=event.reply_code == Reply.REJECTED,
                )
            return None

        return await self._tunnel(client, settle, protocol="SOCKS4")

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        raise UdpNotSupported(f"{self.url.label} carries no UDP (SOCKS4 is TCP only)")


__all__ = ["Socks4Outbound"]
