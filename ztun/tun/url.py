"""Device URLs: `tun://NAME` creates a Linux TUN, `fd://N` adopts an open descriptor."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from .base import Device


def open_device(
    url: str,
    *,
    mtu: int,
    addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    netns: str | None = None,
    offload: bool = True,
) -> Device:
    """Open the device `url` names; ValueError says what is wrong with the URL."""
    parts = urlsplit(url)
    if parts.scheme == "tun":
        name = parts.netloc or parts.path
        if sys.platform != "linux":
            raise ValueError(f"device {url!r}: tun:// is supported on Linux only")
        from .linux import LinuxTun

        return LinuxTun(name, mtu=mtu, addresses=addresses, netns=netns, offload=offload)
    if parts.scheme == "fd":
        text = parts.netloc or parts.path
        if not text.isdigit():
            raise ValueError(f"device {url!r}: fd:// needs a descriptor number, e.g. fd://3")
        from .fd import FdDevice

        return FdDevice(int(text), mtu=mtu)
    raise ValueError(f"device {url!r}: unknown scheme (use tun://NAME or fd://N)")
