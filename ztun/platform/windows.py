"""Windows: the Wintun adapter, routes and addresses through IP Helper.

A stub until issue 14's Windows layer lands: the device opens (``ztun.tun.windows``) and
the engine reads it from its reader thread (a Wintun adapter has no descriptor, only a
read event: `Device.wait_readable`); what needs IP Helper (routes, DNS, whether a pid is
a ztun) raises `UnsupportedPlatform` naming what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .base import Accelerations, Platform, UnsupportedPlatform

if TYPE_CHECKING:
    from ..options import RunOptions
    from ..route import Journal
    from .base import RouteApplier


def _missing(what: str) -> NoReturn:
    raise UnsupportedPlatform(f"ztun on Windows: {what} is not implemented yet (issue 14)")


class WindowsPlatform(Platform):
    name = "windows"

    @property
    def state_dir(self) -> Path:
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "ztun"

    def probe(self, opts: RunOptions) -> Accelerations:
        return Accelerations(tun_reader="thread")  # Wintun: an event handle, no descriptor

    def routes(self, journal: Journal) -> RouteApplier:
        _missing("--auto-route (IP Helper)")

    def is_ztun(self, pid: int) -> bool:
        _missing("finding a journal's owner process")
