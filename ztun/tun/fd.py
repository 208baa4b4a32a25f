"""A TUN handed over as an already-open descriptor (`fd://N`).

Android's VpnService, a parent that set the device up with privileges ztun lacks, and
tests all pass the descriptor; ztun then neither creates nor configures the device.
"""

from __future__ import annotations

import os

from .base import DeviceInfo


class FdDevice(DeviceInfo):
    def __init__(self, fd: int, *, mtu: int = 1500, name: str = "", index: int = 0) -> None:
        try:
            os.fstat(fd)
        except OSError as exc:
            raise ValueError(f"fd://{fd}: not an open descriptor ({exc.strerror})") from exc
        os.set_blocking(fd, False)
        self._fd = fd
        self._mtu = mtu
        self._name = name or f"fd{fd}"
        self._index = index

    def fileno(self) -> int:
        return self._fd

    def write_frame(self, frame: bytes | bytearray | memoryview) -> int:
        return os.write(self._fd, frame)

    def read_into(self, buf: memoryview) -> int:
        return os.readv(self._fd, (buf,))

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        return os.write(self._fd, packet)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
