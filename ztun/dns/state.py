"""Persist the fake-IP pool across restarts: small JSON, written atomically.

Why persist at all: applications and OS resolvers cache answers past their TTL (browsers,
the JVM, long-lived connections that reconnect to the address they already have).  After a
ztun restart such an address must still mean the same domain, or the connection would go
to the wrong site.  The write is atomic (temp file, fsync, rename, fsync the directory) so
a crash mid-save leaves the previous state, never a torn file; a file that cannot be read
is logged and ignored (the pool starts empty -- safe, only less stable).

When to save is the engine's call: on shutdown, and periodically while ``pool.dirty``
(see ``SAVE_INTERVAL``), so a SIGKILL loses at most that much churn.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path

from ztun.dns.fakeip import DEFAULT_MAX_ENTRIES, DEFAULT_V4_RANGE, DEFAULT_V6_RANGE, FakeIpPool

log = logging.getLogger(__name__)

SAVE_INTERVAL = 30.0  # seconds between saves of a dirty pool
DEFAULT_STATE_PATH = Path("/var/lib/ztun/fakeip.json")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_pool(pool: FakeIpPool, path: Path) -> None:
    """Write the pool's state to ``path`` atomically (clears ``pool.dirty``)."""
    data = json.dumps(pool.to_state(), separators=(",", ":")).encode()
    write_atomic(path, data)


def load_pool(
    path: Path,
    v4: ipaddress.IPv4Network | None = DEFAULT_V4_RANGE,
    v6: ipaddress.IPv6Network | None = DEFAULT_V6_RANGE,
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> FakeIpPool:
    """The pool saved at ``path``, or an empty one if there is none or it is unreadable."""
    try:
        state = json.loads(path.read_bytes())
        return FakeIpPool.from_state(state, v4, v6, max_entries=max_entries)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("fake-IP state %s ignored (%s); starting with an empty pool", path, exc)
    return FakeIpPool(v4, v6, max_entries=max_entries)
