"""Build the outbound an URL names (what `ztun run --proxy URL` does)."""

from __future__ import annotations

from .base import Outbound
from .direct import DirectOutbound
from .reject import RejectOutbound
from .socks5 import Socks5Outbound
from .url import ProxyURL, parse_outbound_url


def make_outbound(
    url: str | ProxyURL,
    *,
    connect_timeout: float = 10.0,
    fwmark: int | None = None,
    bind_interface: str | None = None,
) -> Outbound:
    """`socks5[h]://...` -> Socks5Outbound, `direct://` -> DirectOutbound, `reject://`."""
    spec = parse_outbound_url(url) if isinstance(url, str) else url
    if spec == "reject":
        return RejectOutbound()
    if spec == "direct":
        return DirectOutbound(
            connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
        )
    return Socks5Outbound(
        spec, connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
    )
