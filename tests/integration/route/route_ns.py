"""The namespace the auto-route tests work in, and how they look at it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from ztun.tools import tool

NETNS_TIMEOUT = 10.0


@dataclass(frozen=True)
class RouteNs:
    """A namespace with ``uplink0`` (its own default routes, v4 and v6) and a TUN ``zt0``."""

    name: str
    tun: str = "zt0"
    uplink: str = "uplink0"

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NAME ARGS`` (the test's eyes; the product itself uses netlink)."""
        return subprocess.run(
            [tool("ip"), "-n", self.name, *args],
            capture_output=True,
            text=True,
            timeout=NETNS_TIMEOUT,
            check=check,
        )

    def snapshot(self) -> str:
        """The routing state to compare byte-for-byte: rules and every table, v4 and v6."""
        out = []
        for fam in ("-4", "-6"):
            for args in (("rule", "show"), ("route", "show", "table", "all")):
                res = self.ip(fam, *args)
                out.append(f"### ip {fam} {' '.join(args)}\n{res.stdout}")
        return "\n".join(out)
