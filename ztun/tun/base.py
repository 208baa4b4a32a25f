"""The `Device` protocol: what the engine needs from a TUN, whatever the OS.

A device moves whole IP packets (no link-layer header, no packet-info prefix). The
engine reads into one reusable buffer (`read_into`) so the hot path never allocates;
`write` takes any buffer (the stack rewrites packets in place and hands back a view).
Offloads (virtio-net header) and multi-queue are properties of a device, not of its
callers: a device opened with them still reads and writes one packet per call.

The engine reads a device from the event loop when `fileno()` gives a descriptor the
loop can watch, and otherwise from a reader thread that blocks in `wait_readable` (a
Wintun adapter has only a read event: its `fileno()` raises and it implements
`wait_readable` with WaitForSingleObject on that event).
"""

from __future__ import annotations

import io
import select
from typing import Protocol, runtime_checkable


class DeviceError(OSError):
    """A TUN device could not be opened or configured; the message says what to do."""


@runtime_checkable
class Device(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def mtu(self) -> int: ...

    def fileno(self) -> int: ...

    @property
    def frame_header_len(self) -> int:
        """Bytes before the IP packet in a frame: 10 with IFF_VNET_HDR offloads, else 0."""
        ...

    def read_into(self, buf: memoryview) -> int:
        """Read one frame into `buf`; return its length. Raises BlockingIOError when empty."""
        ...

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Write one plain IP packet (the device adds a neutral frame header if it has one)."""
        ...

    def write_frame(self, frame: bytes | bytearray | memoryview) -> int:
        """Write a frame as read (header included), e.g. after an in-place rewrite."""
        ...

    def wait_readable(self, timeout: float) -> bool:
        """Block until a frame can be read or `timeout` seconds passed; True if readable.

        Called by the reader thread only, between batches of `read_into`."""
        ...

    def wake(self) -> None:
        """Make a blocked `wait_readable` return now (the reader thread is stopping)."""
        ...

    def close(self) -> None: ...


def has_descriptor(device: Device) -> bool:
    """Whether `device.fileno()` gives a descriptor an event loop can watch."""
    try:
        device.fileno()
    except (OSError, io.UnsupportedOperation, NotImplementedError):
        return False
    return True


def wait_fd_readable(fd: int, timeout: float) -> bool:
    """poll(2) where the OS has it (no FD_SETSIZE limit on the number), else select."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


class DeviceInfo:
    """What every device reports about itself, from `_name`, `_index` and `_mtu` that the
    backend's constructor sets. Frames are plain IP packets unless a backend says so."""

    _name: str
    _index: int
    _mtu: int

    @property
    def name(self) -> str:
        return self._name

    @property
    def index(self) -> int:
        return self._index

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def frame_header_len(self) -> int:
        return 0

    def fileno(self) -> int:
        raise NotImplementedError

    def wait_readable(self, timeout: float) -> bool:
        """The default for a device with a descriptor: poll it."""
        return wait_fd_readable(self.fileno(), timeout)

    def wake(self) -> None:
        """Nothing by default: a descriptor's poll returns within the reader's slice."""
