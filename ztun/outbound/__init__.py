"""Outbounds: how ztun carries a flow once the stack has it (SOCKS5, direct, reject).

Every outbound has the same two coroutines (`base.Outbound`): `open_tcp(target)` gives a
`TcpStream` (connected non-blocking socket + `early` bytes), `open_udp(on_datagram)` a
`UdpAssociation`. Failures are `OutboundError` subclasses. `make_outbound(url)` builds the
one a `socks5://`, `socks5h://`, `direct://` or `reject://` URL names. The SOCKS5 protocol itself is
the sans-IO `socks5_proto` module.
"""

from .base import DatagramHandler, Outbound, TcpStream, UdpAssociation
from .direct import DirectOutbound, DirectUdpAssociation
from .errors import (
    OutboundError,
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    Rejected,
    TargetUnreachable,
)
from .factory import make_outbound
from .reject import RejectOutbound
from .socks5 import Socks5Outbound, Socks5UdpAssociation
from .target import Target
from .url import ProxyURL, parse_outbound_url, parse_proxy_url

__all__ = [
    "DatagramHandler",
    "DirectOutbound",
    "DirectUdpAssociation",
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
    "Socks5Outbound",
    "Socks5UdpAssociation",
    "Target",
    "TargetUnreachable",
    "TcpStream",
    "UdpAssociation",
    "make_outbound",
    "parse_outbound_url",
    "parse_proxy_url",
]
