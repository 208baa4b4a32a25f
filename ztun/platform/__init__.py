"""The one `Platform` of the OS ztun runs on (see `base.Platform` and docs/contracts.md §5).

Chosen once, by ``sys.platform``; only the chosen OS module is imported, so no OS's
constants or libraries load on another.
"""

from __future__ import annotations

import functools
import sys

from .base import (
    PORTABLE,
    Accelerations,
    DnsApplier,
    JournalScope,
    Platform,
    RouteApplier,
    UnsupportedPlatform,
)

__all__ = [
    "PORTABLE",
    "Accelerations",
    "DnsApplier",
    "JournalScope",
    "Platform",
    "RouteApplier",
    "UnsupportedPlatform",
    "current",
    "for_os",
]


def for_os(name: str) -> Platform:
    """The platform of `name`, a ``sys.platform`` value (tests simulate an OS with it)."""
    if name == "linux":
        from .linux import LinuxPlatform

        return LinuxPlatform()
    if name == "darwin":
        from .darwin import DarwinPlatform

        return DarwinPlatform()
    if name == "win32":
        from .windows import WindowsPlatform

        return WindowsPlatform()
    raise UnsupportedPlatform(f"ztun runs on Linux, macOS and Windows, not {name}")


@functools.cache
def current() -> Platform:
    return for_os(sys.platform)
