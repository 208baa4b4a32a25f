"""Linux TUN: `/dev/net/tun` with IFF_TUN|IFF_NO_PI, configured through netlink (pyroute2).

The descriptor is opened in the namespace given by `netns` (like pyroute2's
`IPRoute(netns=...)`), so a caller in the root namespace can own a TUN that lives in a
test namespace. Flags are collected in one place so IFF_VNET_HDR (offloads) and
IFF_MULTI_QUEUE (one fd per worker) add a flag and a setup step, not a new API.

Multi-queue: `LinuxTun(..., multi_queue=True)` is queue 0; `open_queue()` attaches one
more descriptor to the same device (`LinuxTunQueue`, the same read/write API, whose
close() closes only its descriptor). The kernel numbers attached queues 0..n-1 in the
order they attached; when one detaches (IFF_DETACH_QUEUE, or its last descriptor is
closed) the highest-numbered queue takes its number (drivers/net/tun.c, __tun_detach).
Which queue a packet goes to is the steering program's choice (`set_steering`,
:mod:`ztun.tun.steering`). A non-persistent device goes away with its last attached
descriptor, whichever that is -- not necessarily the first one's.
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

from ..netns import in_netns, netlink_in
from .base import DeviceError, DeviceInfo

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
TUNGETVNETHDRSZ = 0x800454D7
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


def _attach(name: str, flags: int, netns: str | None) -> int:
    """Open /dev/net/tun in `netns` and attach it to the TUN `name` (creating it if it
    does not exist): TUNSETIFF, then the offload set-up when `flags` has IFF_VNET_HDR.

    The namespace matters at open time: TUNSETIFF looks the name up in the namespace
    the descriptor was opened in."""
    with in_netns(netns):
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise DeviceError(
                exc.errno, f"/dev/net/tun: {exc.strerror} (is the tun module loaded? root?)"
            ) from exc
    try:
        ifr = struct.pack("16sH22x", name.encode(), flags)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if flags & IFF_VNET_HDR:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except OSError as exc:
        os.close(fd)
        raise DeviceError(exc.errno, f"TUNSETIFF {name}: {exc.strerror}") from exc
    return fd


#: Packets the kernel queues for ztun to read (the TUN's txqueuelen; the driver's default
#: is 500). It is how long ztun may be off the CPU before a burst is dropped: a burst of
#: new UDP flows at 20,000 datagrams/s (`ztun bench --tests udp-burst`) lost 25-50 % at
#: 500 on this shared 2-core machine under load, 0-8 % at 2000. Memory is held only while
#: ztun falls behind (at most 2000 frames; with offloads a frame can be 64 KiB).
TX_QUEUE_LEN = 2000


class _TunFd(DeviceInfo):
    """Reading and writing one TUN descriptor (a whole device or one of its queues):
    frames are a virtio-net header of `_hdr_len` bytes (0 without offloads) + a packet."""

    _fd: int
    _hdr_len: int
    _zero_hdr: bytes  # what `write` puts in front of a packet
    _netns: str | None

    def _set_frame_header(self, hdr_len: int) -> None:
        self._hdr_len = hdr_len
        # All zero: no checksum left to finish, no segmentation (VIRTIO_NET_HDR_GSO_NONE).
        self._zero_hdr = bytes(hdr_len)

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
            return os.writev(self._fd, (self._zero_hdr, packet)) - self._hdr_len
        return os.write(self._fd, packet)

    def write_frame(self, frame: bytes | bytearray | memoryview) -> int:
        return os.write(self._fd, frame)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LinuxTunQueue(_TunFd):
    """One more queue of a multi-queue `LinuxTun`: its own descriptor on the same
    device. Closing it closes that descriptor only (the kernel detaches the queue);
    the device and its addresses stay."""

    def __init__(
        self, fd: int, *, name: str, index: int, mtu: int, hdr_len: int, netns: str | None
    ) -> None:
        self._fd = fd
        self._name = name
        self._index = index
        self._mtu = mtu
        self._set_frame_header(hdr_len)
        self._netns = netns

    @classmethod
    def adopt(
        cls, fd: int, *, mtu: int = 1500, netns: str | None = None, index: int | None = None
    ) -> LinuxTunQueue:
        """A queue descriptor this process inherited (fork, `pass_fds`): the device's
        name and whether frames carry a virtio-net header are asked from the kernel
        (TUNGETIFF, TUNGETVNETHDRSZ); `index` is looked up in `netns` unless given.

        `fd://N` (ztun.tun.fd.FdDevice) assumes plain packets, which is right only for
        a device without IFF_VNET_HDR; this is the adoption that also fits offloads."""
        try:
            got = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
        except OSError as exc:
            raise DeviceError(
                exc.errno, f"fd {fd}: not an attached TUN descriptor ({exc.strerror})"
            ) from exc
        raw_name, flags = struct.unpack_from("16sH", got)
        name = raw_name.split(b"\0", 1)[0].decode()
        hdr_len = 0
        if flags & IFF_VNET_HDR:
            size = fcntl.ioctl(fd, TUNGETVNETHDRSZ, struct.pack("i", 0))
            hdr_len = struct.unpack("i", size)[0]
        if index is None:
            try:
                with in_netns(netns):
                    index = socket.if_nametoindex(name)
            except OSError:  # the device lives in another namespace: no index here
                index = 0
        os.set_blocking(fd, False)
        return cls(fd, name=name, index=index, mtu=mtu, hdr_len=hdr_len, netns=netns)

    def close(self) -> None:
        self._close_fd()


class LinuxTun(_TunFd):
    """A TUN device this process created (and removes on close: it is not persistent)."""

    def __init__(
        self,
        name: str,
        *,
        mtu: int = 1500,
        addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = (),
        netns: str | None = None,
        offload: bool = False,
        multi_queue: bool = False,
        extra_flags: int = 0,
    ) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"device name {name!r}: must be 1..15 bytes")
        self._name = name
        self._mtu = mtu
        self._netns = netns
        self.flags = (
            IFF_TUN
            | IFF_NO_PI
            | (IFF_VNET_HDR if offload else 0)
            | (IFF_MULTI_QUEUE if multi_queue else 0)
            | extra_flags
        )
        self._set_frame_header(VNET_HDR_LEN if offload else 0)
        fd = _attach(name, self.flags, netns)
        try:
            with in_netns(netns):
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

    @property
    def multi_queue(self) -> bool:
        return bool(self.flags & IFF_MULTI_QUEUE)

    def open_queue(self) -> LinuxTunQueue:
        """Attach one more descriptor to this device (same flags and offloads); it becomes
        the next queue number (see the module docstring for how the kernel numbers)."""
        if not self.multi_queue:
            raise DeviceError(errno.EINVAL, f"{self._name}: not opened with multi_queue=True")
        if self._fd < 0:
            raise DeviceError(errno.EBADF, f"{self._name}: closed")
        fd = _attach(self._name, self.flags, self._netns)
        return LinuxTunQueue(
            fd,
            name=self._name,
            index=self._index,
            mtu=self._mtu,
            hdr_len=self._hdr_len,
            netns=self._netns,
        )

    def set_steering(self, prog_fd: int) -> None:
        """Let the eBPF program `prog_fd` pick every packet's queue (the device keeps its
        own reference: the caller may close `prog_fd`)."""
        from .steering import attach

        attach(self._fd, prog_fd)

    def _configure(
        self, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    ) -> None:
        from ..forked import call_in_child

        def job() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
            netlink_in(self._netns, lambda ipr: self._configure_with(ipr, addresses))
            return self._added

        # In a child: the long-running process never loads pyroute2 (see ztun.forked).
        self._added = call_in_child(job)

    def _configure_with(
        self, ipr: Any, addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
    ) -> None:
        if self.persistent:  # made beforehand: its queue length is its owner's choice
            ipr.link("set", index=self._index, mtu=self._mtu)
        else:
            ipr.link("set", index=self._index, mtu=self._mtu, txqlen=TX_QUEUE_LEN)
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

    def close(self) -> None:
        # Closing the last descriptor of a non-persistent TUN removes the link, its
        # addresses and every route through it (with other queues still attached, that
        # happens when the last of them closes); a persistent one keeps the link, so the
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
                    call_in_child(lambda: netlink_in(self._netns, remove))
            self._close_fd()
