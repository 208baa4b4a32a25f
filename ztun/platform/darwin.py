"""macOS: the utun device, routes through a PF_ROUTE socket, DNS through scutil.

A stub until issue 14's macOS layer lands: the device opens (``ztun.tun.darwin``) and
runs the portable engine; what needs the OS's own calls (routes, DNS, whether a pid is
a ztun) raises `UnsupportedPlatform` naming what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .base import Platform, UnsupportedPlatform

if TYPE_CHECKING:
    from ..route import Journal
    from .base import RouteApplier


def _missing(what: str) -> NoReturn:
    raise UnsupportedPlatform(f"ztun on macOS: {what} is not implemented yet (issue 14)")


class DarwinPlatform(Platform):
    name = "darwin"

    @property
    def state_dir(self) -> Path:
        return Path("/var/run/ztun")

    def routes(self, journal: Journal) -> RouteApplier:
        _missing("--auto-route (PF_ROUTE)")

    def is_ztun(self, pid: int) -> bool:
        _missing("finding a journal's owner process")
