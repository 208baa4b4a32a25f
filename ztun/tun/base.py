"""The `Device` protocol: what the engine needs from a TUN, whatever the OS.

A device moves whole IP packets (no link-layer header, no packet-info prefix). The
engine reads into one reusable buffer (`read_into`) so the hot path never allocates;
`write` takes any buffer (the stack rewrites packets in place and hands back a view).
Offloads (virtio-net header) and multi-queue are properties of a device, not of its
callers: a device opened with them still reads and writes one packet per call.
"""

from __future__ import annotations

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

    def close(self) -> None: ...


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
