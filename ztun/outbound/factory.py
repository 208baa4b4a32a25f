"""Build the outbound an URL names (what `ztun run --proxy URL` does)."""

from __future__ import annotations

from .base import Outbound
from .direct import DirectOutbound
from .http_connect import HttpConnectOutbound
from .reject import RejectOutbound
from .socks4 import Socks4Outbound
from .socks5 import Socks5Outbound
from .url import ProxyURL, parse_outbound_url


def make_outbound(
    url: str | ProxyURL,
    *,
    connect_timeout: float = 10.0,
    fwmark: int | None = None,
    bind_interface: str | None = None,
) -> Outbound:
    """`socks5[h]://` -> Socks5Outbound, `socks4[a]://` -> Socks4Outbound, `http://` ->
    HttpConnectOutbound, `direct://` -> DirectOutbound, `reject://` -> RejectOutbound."""
    spec = parse_outbound_url(url) if isinstance(url, str) else url
    if spec == "reject":
        return RejectOutbound()
    if spec == "direct":
        return DirectOutbound(
            connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
        )
    kind: type[HttpConnectOutbound | Socks4Outbound | Socks5Outbound] = Socks5Outbound
    if spec.scheme == "http":
        kind = HttpConnectOutbound
    elif spec.scheme in ("socks4", "socks4a"):
        kind = Socks4Outbound
    return kind(spec, connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface)
