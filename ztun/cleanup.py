"""`ztun cleanup`: undo what a killed ztun (or `ztun demo`) left behind.

Route journals are named `<device>_<netns inode>.journal`, so cleanup restores only the
ones of the namespace it runs in (run it there: `ip netns exec NAME ztun cleanup`); a
journal whose namespace no longer exists is stale (its routes died with it) and is
removed; others are named, not touched.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re

from . import netns
from .app import RUN_DIR, live_owner, netns_id, ztun_argv
from .demo import PREFIX

log = logging.getLogger("ztun")


def _live_netns_inodes() -> set[int]:
    """Inodes of every network namespace still alive: named ones and those of processes."""
    inodes: set[int] = set()
    for pattern in ("/run/netns/*", "/proc/[0-9]*/ns/net"):
        for entry in glob.glob(pattern):
            with contextlib.suppress(OSError):
                inodes.add(os.stat(entry).st_ino)
    return inodes


def _creator_alive(name: str) -> bool:
    """`ztdemo-<pid>-role` / `ztbench-<pid>...-x`: is that pid a live ztun?"""
    match = re.match(r"[^-]+-(\d+)", name)
    return match is not None and ztun_argv(int(match.group(1))) is not None


def _running_ztun_on(device: str) -> bool:
    """A live `ztun run` in this namespace whose command line names `device`."""
    here = netns_id()
    wanted = f"tun://{device}".encode()
    for entry in glob.glob("/proc/[0-9]*"):
        pid = int(entry.rsplit("/", 1)[1])
        argv = ztun_argv(pid) if pid != os.getpid() else None
        if argv is None or b"run" not in argv or not any(a.endswith(wanted) for a in argv):
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == here:
                return True
    return False


def cleanup() -> int:
    from .route import Journal
    from .route.linux import restore

    here = netns_id()
    live = _live_netns_inodes()
    restored = 0
    for path in sorted(RUN_DIR.glob("*.journal")):
        owner = path.name.removesuffix(".journal").rpartition("_")[2]
        if owner.isdigit() and int(owner) not in live:
            path.unlink(missing_ok=True)
            print(f"ztun cleanup: removed {path} (its network namespace is gone)")
            continue
        if owner != str(here):
            print(
                f"ztun cleanup: {path} belongs to another network namespace (inode {owner}); "
                "run `ztun cleanup` inside it"
            )
            continue
        journal = Journal(path)
        running = live_owner(journal)
        if running is not None:
            print(f"ztun cleanup: {path} belongs to ztun pid {running}, still running; left alone")
            continue
        report = restore(journal)
        print(f"ztun cleanup: restored routes from {path}: {report}")
        restored += 1
    from .redirect import TABLE_PREFIX, leftover_tables, remove_table

    for table in leftover_tables():
        if _running_ztun_on(table.removeprefix(TABLE_PREFIX)):
            print(
                f"ztun cleanup: nftables table inet {table} belongs to a running ztun; left alone"
            )
            continue
        remove_table(table)
        print(f"ztun cleanup: removed nftables table inet {table}")
    removed = 0
    # ztun demo's and ztun bench's namespaces; a name carries its creator's pid, so a
    # demo or bench still running keeps its namespaces.
    for name in [*netns.list_names(PREFIX), *netns.list_names("ztbench-")]:
        if _creator_alive(name):
            print(f"ztun cleanup: {name} belongs to a running demo/bench; left alone")
            continue
        netns.remove(name)
        log.info("removed namespace %s", name)
        removed += 1
    print(f"ztun cleanup: restored {restored} route journal(s), removed {removed} namespace(s)")
    return 0
