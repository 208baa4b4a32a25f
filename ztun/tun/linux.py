"""Linux TUN: `/dev/net/tun` with IFF_TUN|IFF_NO_PI, configured through netlink (pyroute2).

The descriptor is opened in the namespace given by `netns` (like pyroute2's
`IPRoute(netns=...)`), so a caller in the root namespace can own a TUN that lives in a
test namespace. Flags are collected in one place so IFF_VNET_HDR (offloads) and
IFF_MULTI_QUEUE (one fd per worker) add a flag and a setup step, not a new API.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

from ..netns import in_netns
from .base import DeviceError, DeviceInfo

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
IFF_PERSIST = 0x0800
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
IFA_F_NODAD = 0x02  # a TUN has no neighbours to collide with: skip IPv6 DAD's delay
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
#: What ztun asks the kernel to leave undone: checksums and TCP segmentation. UDP
#: segmentation offload (USO) is not asked for -- UDP is relayed datagram by datagram.
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
VNET_HDR_LEN = 10
_ZERO_VNET_HDR = bytes(VNET_HDR_LEN)


def _netlink(netns: str | None, fn: Any) -> None:
    if netns:
        from ..netns import netlink

        netlink(netns, fn)
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        fn(ipr)


class LinuxTun(DeviceInfo):
    """A TUN device this process created (and removes on close: it is not persistent)."""

    def __init__(
        self,
        name: str,
        *,
        mtu: int = 1500,
        addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
        netns: str | None = None,
        offload: bool = False,
        extra_flags: int = 0,
    ) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"device name {name!r}: must be 1..15 bytes")
        self._name = name
        self._mtu = mtu
        self._netns = netns
        self.flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0) | extra_flags
        self._hdr_len = VNET_HDR_LEN if offload else 0
        with in_netns(netns):
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                raise DeviceError(
                    exc.errno, f"/dev/net/tun: {exc.strerror} (is the tun module loaded? root?)"
                ) from exc
            try:
                ifr = struct.pack("16sH22x", name.encode(), self.flags)
                fcntl.ioctl(fd, TUNSETIFF, ifr)
                if offload:
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
                self._index = socket.if_nametoindex(name)
                got = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
                self.persistent = bool(struct.unpack_from("16xH", got)[0] & IFF_PERSIST)
            except OSError as exc:
                os.close(fd)
                raise DeviceError(exc.errno, f"TUNSETIFF {name}: {exc.strerror}") from exc
        self._fd = fd
        # On a persistent TUN (made beforehand with `ip tuntap add`) the link outlives
        # us: remember what we added so close() can take exactly that away again.
        self._added: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        try:
            self._configure(list(addresses))
        except Exception:
            self.close()
            raise

    def _configure(
        self, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    ) -> None:
        from ..forked import call_in_child

        def job() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
            _netlink(self._netns, lambda ipr: self._configure_with(ipr, addresses))
            return self._added

        # In a child: the long-running process never loads pyroute2 (see ztun.forked).
        self._added = call_in_child(job)

    def _configure_with(
        self, ipr: Any, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    ) -> None:
        ipr.link("set", index=self._index, mtu=self._mtu)
        for iface in addresses:
            kwargs: dict[str, Any] = {
                "index": self._index,
                "address": str(iface.ip),
                "prefixlen": iface.network.prefixlen,
            }
            if iface.version == 6:
                kwargs["flags"] = IFA_F_NODAD
            try:
                ipr.addr("add", **kwargs)
            except Exception as exc:  # pyroute2's NetlinkError; EEXIST: it was there before
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise
                continue
            self._added.append(iface)
        ipr.link("set", index=self._index, state="up")

    @property
    def netns(self) -> str | None:
        return self._netns

    def fileno(self) -> int:
        return self._fd

    @property
    def frame_header_len(self) -> int:
        return self._hdr_len

    def read_into(self, buf: memoryview) -> int:
        return os.readv(self._fd, (buf,))

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        if self._hdr_len:
            return os.writev(self._fd, (_ZERO_VNET_HDR, packet)) - self._hdr_len
        return os.write(self._fd, packet)

    def write_frame(self, frame: bytes | bytearray | memoryview) -> int:
        return os.write(self._fd, frame)

    def close(self) -> None:
        # Closing the last descriptor of a non-persistent TUN removes the link, its
        # addresses and every route through it; a persistent one keeps the link, so the
        # addresses ztun added are removed by hand.
        if self._fd >= 0:
            if self.persistent and self._added:
                added, self._added = self._added, []

                def remove(ipr: Any) -> None:
                    for iface in added:
                        with contextlib.suppress(Exception):
                            ipr.addr(
                                "del",
                                index=self._index,
                                address=str(iface.ip),
                                prefixlen=iface.network.prefixlen,
                            )

                from ..forked import call_in_child

                with contextlib.suppress(Exception):
                    call_in_child(lambda: _netlink(self._netns, remove))
            os.close(self._fd)
            self._fd = -1
