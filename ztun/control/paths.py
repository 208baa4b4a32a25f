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
from dataclasses import dataclass
from pathlib import Path

from ..platform import Platform, current

PIPE_PREFIX = "\\\\.\\pipe\\ztun-"
SUFFIX = ".sock"


def netns_tag(proc: Path = Path("/proc"), named: Path = Path("/run/netns")) -> str:
    """`@<inode>` when this process's network namespace is one of several sharing this
    `/run` (Linux), else "".

    PID 1's namespace is the host's: any other gets the tag. Where PID 1's cannot be read
    (a container's root without CAP_SYS_PTRACE), a namespace named under /run/netns
    (`ip netns add`, which keeps /run shared) gets it; an unnamed one is taken as the
    host's or a container's own (a container's /run is its own as well).
    """
    try:
        ours = os.stat(proc / "self/ns/net").st_ino
    except OSError:
        return ""
    try:
        init = os.stat(proc / "1/ns/net").st_ino
    except OSError:
        pass
    else:
        return "" if ours == init else f"@{ours}"
    try:
        entries = list(named.iterdir())
    except OSError:
        return ""
    for entry in entries:
        try:
            if os.stat(entry).st_ino == ours:
                return f"@{ours}"
        except OSError:
            continue
    return ""


def control_path(
    device: str, platform: Platform | None = None, directory: Path | None = None
) -> str:
    """The default control path of the instance on `device` in this namespace."""
    platform = platform or current()
    if platform.name == "windows":
        return f"{PIPE_PREFIX}{device}"
    tag = netns_tag() if platform.name == "linux" else ""
    return str((directory or platform.state_dir) / f"{device}{tag}{SUFFIX}")


@dataclass(frozen=True, slots=True, order=True)
class Instance:
    device: str
    path: str


def discover(platform: Platform | None = None, directory: Path | None = None) -> list[Instance]:
    """Control endpoints of this namespace's instances, by device name (some may be stale:
    a killed ztun leaves its socket file; connecting tells)."""
    platform = platform or current()
    if platform.name == "windows":
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
    folder = directory or platform.state_dir
    tag = netns_tag() if platform.name == "linux" else ""
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
