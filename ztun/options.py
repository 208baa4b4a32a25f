"""What `ztun run` is asked to do: the validated config (file + flags) plus run-only knobs.

Addresses, MTU and the outbound interface live in `config` alone (flags are folded into
it by `load_config`); the properties below read them from there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .rules import Config
from .rules.config import DEFAULT_ADDRESSES

DEFAULT_INET4, DEFAULT_INET6 = DEFAULT_ADDRESSES


@dataclass(frozen=True, slots=True)
class RunOptions:
    device: str = "tun://ztun0"
    proxy: str = "socks5://127.0.0.1:1080"
    udp_proxy: str | None = None  # None: UDP goes through `proxy` too
    udp_timeout: float = 60.0
    connect_timeout: float = 10.0
    netns: str | None = None
    fwmark: int | None = None
    offload: bool = True  # IFF_VNET_HDR + TSO/CSUM: 64 KiB super-packets per read
    splice: bool = True  # relay TCP with splice(2) instead of recv/send copies
    redirect: bool = False  # nftables sends TCP for the TUN straight to the listener
    workers: int = 1  # >1: one process per queue of a multi-queue TUN (ztun.workers)
    tun_thread: bool = False  # pump the TUN in its own thread, not on the event loop
    portable: bool = False  # no OS-specific acceleration at all (ztun.platform.PORTABLE)
    kernel_nat: bool = True  # TCP rewritten by an eBPF program on the TUN (ztun.kernelnat)
    config: Config = field(default_factory=Config)  # routing, DNS, sniffing, rules
    # What the command line set over the config file: a reload re-reads the file and
    # applies these again (a flag keeps winning).
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def addresses(self) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
        return self.config.addresses

    @property
    def mtu(self) -> int:
        return self.config.mtu

    @property
    def bind_interface(self) -> str | None:
        return self.config.interface

    @property
    def inet4(self) -> ipaddress.IPv4Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv4Interface)), None)

    @property
    def inet6(self) -> ipaddress.IPv6Interface | None:
        return next((a for a in self.addresses if isinstance(a, ipaddress.IPv6Interface)), None)
