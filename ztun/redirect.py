"""`--redirect`: nftables sends TCP bound for the TUN straight to ztun's listener.

The kernel then delivers the app's connection to ztun without it ever crossing the TUN,
so TCP costs one splice relay and no per-packet work at all (sing-box's auto_redirect
idea). The rule matches on the route's output interface -- only what would have entered
the TUN is redirected -- in the nat OUTPUT hook, i.e. for connections made in this
namespace; ztun's own marked sockets route elsewhere and are never caught. Forwarded
traffic (from other hosts) still takes the TUN path.

The table is named after the device, so `ztun cleanup` and the next start can remove
what a killed ztun left, and nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from ztun.tools import tool

NFT_TIMEOUT = 10.0
TABLE_PREFIX = "ztun_"


class RedirectError(RuntimeError):
    """nftables refused the ruleset (or is not installed); the message says which."""


def table_name(device: str) -> str:
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", device)


def ruleset(device: str, port: int) -> str:
    """The nft script: redirect TCP whose route goes into `device` to `port`."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", device):
        raise ValueError(f"device name {device!r} cannot be used in an nft rule")
    return (
        f"table inet {table_name(device)} {{\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f'    oifname "{device}" meta l4proto tcp redirect to :{port}\n'
        "  }\n"
        "}\n"
    )


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    nft = shutil.which(tool("nft"))
    if nft is None:
        raise RedirectError("--redirect needs nftables' `nft` (apt-get install nftables)")
    return subprocess.run(
        [nft, *args], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT
    )


def install(device: str, port: int) -> None:
    remove(device)
    done = _nft(["-f", "-"], ruleset(device, port))
    if done.returncode != 0:
        raise RedirectError(f"nft refused the redirect rule: {done.stderr.strip()}")


def remove(device: str) -> bool:
    """Delete the device's table if present; True if there was one."""
    if shutil.which(tool("nft")) is None:
        return False
    done = _nft(["delete", "table", "inet", table_name(device)])
    return done.returncode == 0


def leftover_tables() -> list[str]:
    """ztun's tables in this namespace (for `ztun cleanup`)."""
    if shutil.which(tool("nft")) is None:
        return []
    done = _nft(["-j", "list", "tables"])
    if done.returncode != 0:
        return []
    names = []
    for item in json.loads(done.stdout).get("nftables", []):
        table = item.get("table")
        if table and table.get("family") == "inet" and table["name"].startswith(TABLE_PREFIX):
            names.append(table["name"])
    return names


def remove_table(name: str) -> None:
    _nft(["delete", "table", "inet", name])
