"""Who owns a harness name: the owner prefix, and the record of its live process.

Every namespace/link the harness creates is named ``zt<session><worker>-...`` (see
harness.topo) -- or ``ztprobe<pid>-...`` for a capability probe, ``ztvagrant<pid>-...``
for a Vagrant box's libvirt sandbox (harness.hosts.vagrant) -- and the process that
creates the first one writes ``<prefix>owner`` (its pid and start time) here.  Cleanup
then tells a live run (leave it alone) from a dead one (remove its leftovers), and never
touches a name that merely starts with "zt" but is not ours (another tool's "ztbench-").
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

__all__ = [
    "NAME_PREFIX",
    "OWNER_DIR",
    "claim_owner",
    "known_owners",
    "owner_alive",
    "owner_prefix",
    "release_owner",
]

NAME_PREFIX = "zt"
"""Every name the harness creates starts with this."""

OWNER_DIR = Path("/run/ztun-harness")
"""On tmpfs: owner records vanish on reboot, like the namespaces they describe."""

_OWNER_RE = re.compile(rf"^({NAME_PREFIX}(?:[0-9a-f]{{4}}(?:m|w\d+)|probe\d+|vagrant\d+)-)")
_SUFFIX = "owner"

_claimed: set[str] = set()
_lock = threading.Lock()


def owner_prefix(name: str) -> str | None:
    """``zt4f2am-000-client`` / ``zt4f2am-0000a`` -> ``zt4f2am-``; None if not ours."""
    match = _OWNER_RE.match(name)
    return match.group(1) if match else None


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def claim_owner(prefix: str) -> None:
    """Record this process as the owner of ``prefix`` (once per process and prefix)."""
    with _lock:
        if prefix in _claimed:
            return
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        (OWNER_DIR / f"{prefix}{_SUFFIX}").write_text(f"{pid} {_start_time(pid)}\n")
        _claimed.add(prefix)


def release_owner(prefix: str) -> None:
    with _lock:
        _claimed.discard(prefix)
        with contextlib.suppress(FileNotFoundError):
            (OWNER_DIR / f"{prefix}{_SUFFIX}").unlink()


def owner_alive(prefix: str) -> bool:
    """True if the process that claimed ``prefix`` still runs (same pid, same start)."""
    try:
        pid_text, start = (OWNER_DIR / f"{prefix}{_SUFFIX}").read_text().split()
    except (OSError, ValueError):
        return False
    pid = int(pid_text)
    return pid == os.getpid() or _start_time(pid) == start


def known_owners() -> list[str]:
    """Prefixes with an owner record (alive or not)."""
    try:
        files = os.listdir(OWNER_DIR)
    except FileNotFoundError:
        return []
    return sorted(f.removesuffix(_SUFFIX) for f in files if f.endswith(_SUFFIX))
