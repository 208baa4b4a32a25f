"""Device URLs: `tun://NAME` creates the platform's TUN, `fd://N` adopts an open descriptor.

`tun://NAME` means, by ``sys.platform``:

- ``linux``: a TUN named NAME (1..15 bytes), in ``netns`` if given, with offloads if asked;
- ``darwin``: a utun -- macOS picks utun names, so NAME is ``utunN``, or ``utun``/empty
  for the next free one (:mod:`ztun.tun.darwin`);
- ``win32``: a Wintun adapter named NAME (:mod:`ztun.tun.windows`).

Namespaces and virtio-net offloads are Linux features: ``netns`` elsewhere is an error;
``offload`` is a request that other platforms simply cannot grant (the device reports
``frame_header_len`` 0), so it is ignored there rather than failing a default config.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from .base import Device

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: tun://NAME: Linux allows more, but the name also goes into nftables rules and logs.
#: Its dev_valid_name() (net/core/dev.c) refuses ':' and the names "." and "..".
_TUN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
#: The largest descriptor number: file descriptors are C ints.
MAX_FD = (1 << 31) - 1


def device_url_problem(url: str) -> str | None:
    """What is wrong with the device URL `url` (None: nothing), said before anything is
    opened -- for `--device` and the config's `device` alike."""
    if url.startswith("tun://"):
        name = url[len("tun://") :]
        if not _TUN_NAME.fullmatch(name) or name in (".", ".."):
            return (
                f"device {url!r}: tun://NAME needs a name of 1..15 letters, digits or _.- "
                "(not . or ..)"
            )
        return None
    if url.startswith("fd://"):
        number = url[len("fd://") :]
        # ASCII digits only: str.isdigit() also takes other scripts' digits and int()
        # reads them, so "fd://٣" would adopt descriptor 3.
        if not (number.isascii() and number.isdigit()) or int(number) > MAX_FD:
            return f"device {url!r}: fd://N needs a descriptor number (0..{MAX_FD})"
        return None
    return f"device {url!r}: use tun://NAME or fd://N"


def open_device(
    url: str,
    *,
    mtu: int,
    addresses: Sequence[IpInterface],
    netns: str | None = None,
    offload: bool = True,
    multi_queue: bool = False,
) -> Device:
    """Open the device `url` names; ValueError says what is wrong with the URL.

    `multi_queue`: a Linux TUN that takes more queues (`LinuxTun.open_queue`)."""
    parts = urlsplit(url)
    if parts.scheme == "tun":
        return _open_tun(
            url,
            parts.netloc or parts.path,
            mtu=mtu,
            addresses=addresses,
            netns=netns,
            offload=offload,
            multi_queue=multi_queue,
        )
    if parts.scheme == "fd":
        text = parts.netloc or parts.path
        if not text.isdigit():
            raise ValueError(f"device {url!r}: fd:// needs a descriptor number, e.g. fd://3")
        return _open_fd(int(text), mtu=mtu, netns=netns)
    raise ValueError(f"device {url!r}: unknown scheme (use tun://NAME or fd://N)")


def _open_fd(fd: int, *, mtu: int, netns: str | None) -> Device:
    """A Linux TUN descriptor is adopted with what the kernel says of it (its name, and
    whether frames carry a virtio-net header: a parent may have opened it with
    IFF_VNET_HDR); anything else (a socketpair, another OS's descriptor) is plain packets."""
    from .fd import FdDevice

    if sys.platform == "linux":
        from .base import DeviceError
        from .linux import LinuxTunQueue

        try:
            return LinuxTunQueue.adopt(fd, mtu=mtu, netns=netns)
        except DeviceError:
            pass  # not a TUN descriptor
    return FdDevice(fd, mtu=mtu)


def _open_tun(
    url: str,
    name: str,
    *,
    mtu: int,
    addresses: Sequence[IpInterface],
    netns: str | None,
    offload: bool,
    multi_queue: bool,
) -> Device:
    platform = sys.platform
    if platform == "linux":
        from .linux import LinuxTun

        return LinuxTun(
            name,
            mtu=mtu,
            addresses=addresses,
            netns=netns,
            offload=offload,
            multi_queue=multi_queue,
        )
    if multi_queue:
        raise ValueError(f"device {url!r}: multi-queue TUNs exist only on Linux")
    if netns is not None:
        raise ValueError(f"device {url!r}: network namespaces exist only on Linux")
    if platform == "darwin":
        from .darwin import open_utun

        return open_utun(name, mtu=mtu, addresses=addresses)
    if platform == "win32":
        from .windows import open_wintun

        return open_wintun(name, mtu=mtu, addresses=addresses)
    raise ValueError(
        f"device {url!r}: tun:// is supported on Linux, macOS and Windows, not {platform}"
    )
