"""TUN devices: the `Device` protocol and its backends -- Linux TUN, macOS utun, Windows
Wintun, and an inherited descriptor.  `open_device(url)` picks one by URL and platform.

The macOS and Windows backends are imported on first use (`ztun.tun.DarwinUtun`), so
importing this package on Linux loads no ctypes tables and no other OS's constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Device, DeviceError
from .fd import FdDevice
from .url import open_device

if TYPE_CHECKING:
    from .darwin import DarwinUtun
    from .windows import WintunDevice

__all__ = ["DarwinUtun", "Device", "DeviceError", "FdDevice", "WintunDevice", "open_device"]

_LAZY = {"DarwinUtun": ".darwin", "WintunDevice": ".windows"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
