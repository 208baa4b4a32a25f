"""macOS: the utun device, routes through a PF_ROUTE socket, DNS through scutil.

The engine runs the portable profile (nothing Linux-only exists here) and reads the utun
from the loop, its control socket being a pollable descriptor.  ``--auto-route`` is
:class:`ztun.route.darwin.DarwinRoutes`; ``--dns`` points the primary service's resolver
at the TUN (:class:`ztun.route.darwin.DarwinDns`); both write the device's journal in
``/var/run/ztun``, which macOS clears at boot, as a reboot clears the routes and the
dynamic-store keys too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .base import Platform

if TYPE_CHECKING:
    from ..route import Journal
    from ..route.darwin import DarwinDns, DarwinRoutes

PS_TIMEOUT = 5.0


def ps_command(pid: int) -> str | None:  # pragma: no cover - macOS only (the hosted row)
    """The command line of `pid` as ``ps -o command=`` shows it (None: no such process)."""
    from ..tools import tool

    try:
        done = subprocess.run(
            [tool("ps"), "-p", str(pid), "-o", "command="],
            capture_output=True,
            text=True,
            timeout=PS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


class DarwinPlatform(Platform):
    name = "darwin"

    @property
    def state_dir(self) -> Path:
        return Path("/var/run/ztun")

    def routes(self, journal: Journal) -> DarwinRoutes:
        from ..route.darwin import DarwinRoutes

        return DarwinRoutes(journal)

    def dns(self, journal: Journal) -> DarwinDns:
        from ..route.darwin import DarwinDns

        return DarwinDns(journal, device=journal.path.stem)

    def is_ztun(self, pid: int) -> bool:
        command = ps_command(pid)
        return command is not None and "ztun" in command
