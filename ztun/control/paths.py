"""Where an instance's control socket lives, and finding the running ones.

One socket per instance: `<state dir>/<device>.sock` (Linux `/run/ztun`, macOS
`/var/run/ztun`), or on Windows the named pipe `\\\\.\\pipe\\ztun-<device>`. `/run` is
shared by every network namespace while device names are not: two ztuns on `ztun0` in
two namespaces (containers, test topologies) would fight over one path. So outside the
initial namespace the name carries the namespace's inode, `<device>@<inode>.sock` --
what the route journal does too -- and a command finds the instances of the namespace it
runs in, the way `ip link` shows that namespace's devices.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

STATE_DIRS = {"linux": "/run/ztun", "darwin": "/var/run/ztun"}
PIPE_PREFIX = "\\\\.\\pipe\\ztun-"
SUFFIX = ".sock"


def platform_name() -> str:
    return {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")


def state_dir(platform: str | None = None) -> Path:
    platform = platform or platform_name()
    if platform == "windows":
        return Path(os.environ.get("PROGRAMDATA", "C:\\ProgramData")) / "ztun"
    return Path(STATE_DIRS.get(platform, "/run/ztun"))


def netns_tag() -> str:
    """`@<inode>` when this process is in a network namespace other than PID 1's (Linux),
    else "" (also when PID 1's namespace cannot be read: a container's view)."""
    if platform_name() != "linux":
        return ""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        init = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return ""
    return "" if ours == init else f"@{ours}"


def control_path(device: str, platform: str | None = None, directory: Path | None = None) -> str:
    """The default control path of the instance on `device` in this namespace."""
    platform = platform or platform_name()
    if platform == "windows":
        return f"{PIPE_PREFIX}{device}"
    return str((directory or state_dir(platform)) / f"{device}{netns_tag()}{SUFFIX}")


@dataclass(frozen=True, slots=True, order=True)
class Instance:
    device: str
    path: str


def discover(platform: str | None = None, directory: Path | None = None) -> list[Instance]:
    """Control endpoints of this namespace's instances, by device name (some may be stale:
    a killed ztun leaves its socket file; connecting tells)."""
    platform = platform or platform_name()
    if platform == "windows":
        try:
            names = os.listdir("\\\\.\\pipe\\")
        except OSError:
            return []
        prefix = PIPE_PREFIX.rpartition("\\")[2]
        return sorted(
            Instance(name[len(prefix) :], f"\\\\.\\pipe\\{name}")
            for name in names
            if name.startswith(prefix)
        )
    folder = directory or state_dir(platform)
    tag = netns_tag()
    found = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not name.endswith(SUFFIX):
            continue
        stem = name[: -len(SUFFIX)]
        device, _, ns = stem.partition("@")
        if (f"@{ns}" if ns else "") == tag:
            found.append(Instance(device, str(entry)))
    return sorted(found, key=lambda i: i.device)
