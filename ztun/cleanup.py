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

from . import netns
from .app import RUN_DIR, netns_id
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
        report = restore(Journal(path))
        print(f"ztun cleanup: restored routes from {path}: {report}")
        restored += 1
    from .redirect import leftover_tables, remove_table

    for table in leftover_tables():
        remove_table(table)
        print(f"ztun cleanup: removed nftables table inet {table}")
    removed = 0
    # ztun demo's and ztun bench's namespaces (their names say whose they are).
    for name in [*netns.list_names(PREFIX), *netns.list_names("ztbench-")]:
        netns.remove(name)
        log.info("removed namespace %s", name)
        removed += 1
    print(f"ztun cleanup: restored {restored} route journal(s), removed {removed} namespace(s)")
    return 0
