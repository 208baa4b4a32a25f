"""Outbounds: how ztun carries a flow once the stack has it (SOCKS5, SOCKS4/4a, HTTP
CONNECT, direct, reject, and groups of proxies).

Every outbound has the same two coroutines (`base.Outbound`): `open_tcp(target)` gives a
`TcpStream` (connected non-blocking socket + `early` bytes), `open_udp(on_datagram)` a
`UdpAssociation`. Failures are `OutboundError` subclasses. `make_outbound(url)` builds the
one a `socks5://`, `socks5h://`, `socks4://`, `socks4a://`, `http://`, `direct://` or
`reject://` URL names. Each protocol is a sans-IO core (`socks5_proto`, `socks4_proto`,
`http_connect_proto`) driven by the shared `dialer.ProxyDialer`.
"""

from .base import DatagramHandler, Outbound, TcpStream, UdpAssociation
from .direct import DirectOutbound, DirectUdpAssociation
from .errors import (
    NoMemberUp,
    OutboundError,
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    Rejected,
    TargetUnreachable,
    TargetUnsupported,
    UdpNotSupported,
)
from .factory import make_outbound
from .http_connect import HttpConnectOutbound
from .reject import RejectOutbound
from .socks4 import Socks4Outbound
from .socks5 import Socks5Outbound, Socks5UdpAssociation
from .target import Target
from .url import ProxyURL, parse_outbound_url, parse_proxy_url

__all__ = [
    "DatagramHandler",
    "DirectOutbound",
    "DirectUdpAssociation",
    "HttpConnectOutbound",
    "NoMemberUp",
    "Outbound",
    "OutboundError",
    "ProxyAuthFailed",
    "ProxyProtocolError",
    "ProxyRefused",
    "ProxyTimeout",
    "ProxyURL",
    "ProxyUnreachable",
    "RejectOutbound",
    "Rejected",
    "Socks4Outbound",
    "Socks5Outbound",
    "Socks5UdpAssociation",
    "Target",
    "TargetUnreachable",
    "TargetUnsupported",
    "TcpStream",
    "UdpAssociation",
    "UdpNotSupported",
    "make_outbound",
    "parse_outbound_url",
    "parse_proxy_url",
]
