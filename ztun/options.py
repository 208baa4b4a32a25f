"""What `ztun run` is asked to do: one model for CLI flags (and, later, the TOML config)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .rules import Config

DEFAULT_INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
DEFAULT_INET6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")


@dataclass(frozen=True, slots=True)
class RunOptions:
    device: str = "tun://ztun0"
    proxy: str = "socks5://127.0.0.1:1080"
    udp_proxy: str | None = None  # None: UDP goes through `proxy` too
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = field(
        default=(DEFAULT_INET4, DEFAULT_INET6)
    )
    mtu: int = 1500
    udp_timeout: float = 60.0
    connect_timeout: float = 10.0
    netns: str | None = None
    fwmark: int | None = None
    bind_interface: str | None = None
    offload: bool = True  # IFF_VNET_HDR + TSO/CSUM: 64 KiB super-packets per read
    splice: bool = True  # relay TCP with splice(2) instead of recv/send copies
    redirect: bool = False  # nftables sends TCP for the TUN straight to the listener
    config: Config = field(default_factory=Config)  # routing, DNS, sniffing, rules

    @property
    def inet4(self) -> ipaddress.IPv4Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv4Interface)), None)

    @property
    def inet6(self) -> ipaddress.IPv6Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv6Interface)), None)
