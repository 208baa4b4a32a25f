"""TUN devices: the `Device` protocol and its Linux and inherited-descriptor backends."""

from .base import Device, DeviceError
from .fd import FdDevice
from .url import open_device

__all__ = ["Device", "DeviceError", "FdDevice", "open_device"]
