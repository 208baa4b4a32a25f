"""Leak check and cleanup: nothing of ours may outlive its owner.

Ownership.  Every pytest process (each xdist worker, or the single process) names
everything it creates under its own *owner prefix* (``zt<session><worker>-``, see
harness.topo) and records its pid and start time for that prefix (harness.owners).
So:

* the leak check at session end looks only at its own prefix -- two workers, or two
  concurrent runs on one machine, never report each other;
* ``python -m harness cleanup`` removes leftovers whose owner is dead (a run killed
  with SIGKILL) and leaves a live run alone unless ``--force``;
* a new session removes dead owners' leftovers before it starts.

The root namespace is snapshotted (links, addresses, routes, rules) when the session
starts; any difference at the end is a leak too -- a test that configured the *root*
namespace by mistake is the worst bug this harness can have.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.hosts.netns import NetnsError, list_netns, netns_pids, remove_netns
from harness.owners import (
    NAME_PREFIX,
    OWNER_DIR,
    claim_owner,
    known_owners,
    owner_alive,
    owner_prefix,
    release_owner,
)
from harness.proc import live_processes, proc_stats, run_local
from ztun.tools import tool

__all__ = [
    "OWNER_DIR",
    "CleanupReport",
    "Leaks",
    "RootSnapshot",
    "claim_owner",
    "cleanup",
    "find_leaks",
    "kill_live_processes",
    "owner_alive",
    "owner_prefix",
    "release_owner",
]

# --------------------------------------------------------------------------- root snapshot


ROOT_VIEWS: dict[str, list[str]] = {
    "link": [tool("ip"), "-o", "link", "show"],
    "address": [tool("ip"), "-o", "address", "show"],
    "route": [tool("ip"), "-o", "route", "show", "table", "all"],
    "route6": [tool("ip"), "-o", "-6", "route", "show", "table", "all"],
    "rule": [tool("ip"), "rule", "show"],
    "rule6": [tool("ip"), "-6", "rule", "show"],
}
"""Views of the root namespace compared before/after (read-only commands)."""


def _normalise(line: str) -> str:
    # Counters and states change on their own; compare what was configured.
    words = line.replace("\\", " ").split()
    drop_after = {"valid_lft", "preferred_lft"}
    out: list[str] = []
    skip = 0
    for word in words:
        if skip:
            skip -= 1
            continue
        if word in drop_after:
            skip = 1
            continue
        if word in {"UP", "DOWN", "LOWER_UP", "NO-CARRIER", "UNKNOWN", "state", "linkdown"}:
            continue
        out.append(word)
    return " ".join(out)


@dataclass(frozen=True)
class RootSnapshot:
    views: dict[str, frozenset[str]]

    @classmethod
    def take(cls) -> RootSnapshot:
        views: dict[str, frozenset[str]] = {}
        for key, argv in ROOT_VIEWS.items():
            result = run_local(argv, timeout=10.0)
            lines = result.stdout.splitlines() if result.ok else []
            views[key] = frozenset(_normalise(line) for line in lines if line.strip())
        return cls(views)

    def added_since(self, before: RootSnapshot) -> list[str]:
        """Lines present now and not before (what a test added to the root namespace)."""
        added: list[str] = []
        for key, lines in self.views.items():
            for line in sorted(lines - before.views.get(key, frozenset())):
                added.append(f"{key}: {line}")
        return added


# --------------------------------------------------------------------------- leaks


@dataclass
class Leaks:
    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    root_changes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.root_links or self.processes or self.root_changes)

    def merge(self, other: Leaks) -> None:
        for attr in ("namespaces", "root_links", "processes", "root_changes"):
            mine: list[str] = getattr(self, attr)
            mine.extend(x for x in getattr(other, attr) if x not in mine)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "namespaces": self.namespaces,
            "root_links": self.root_links,
            "processes": self.processes,
            "root_changes": self.root_changes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[str]]) -> Leaks:
        return cls(**{k: list(v) for k, v in data.items()})

    def render(self) -> str:
        lines: list[str] = []
        for ns in self.namespaces:
            pids = netns_pids(ns) if Path(f"/run/netns/{ns}").exists() else []
            lines.append(f"namespace {ns}" + (f" (pids {pids})" if pids else ""))
        lines += [f"root-namespace link {name}" for name in self.root_links]
        lines += [f"process {desc}" for desc in self.processes]
        lines += [f"root namespace changed: {change}" for change in self.root_changes]
        return "\n".join(lines)


def _root_links(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    except OSError:
        return []


def _child_processes() -> list[str]:
    """Live, non-zombie children of this process (not via the spawn registry)."""
    me = os.getpid()
    return [
        f"pid {pid} {comm}"
        for pid, comm, fields in proc_stats()
        if len(fields) > 1 and int(fields[1]) == me and fields[0] != "Z"
    ]


def find_leaks(
    prefix: str, *, baseline: RootSnapshot | None = None, scan_children: bool = True
) -> Leaks:
    """What is left under ``prefix`` (namespaces, root links) and of our processes."""
    leaks = Leaks(namespaces=list_netns(prefix), root_links=_root_links(prefix))
    for proc in live_processes():
        leaks.processes.append(f"{proc.name} pid {proc.pid} ({' '.join(proc.argv)[:120]})")
    if scan_children:
        known = {p.split()[1] for p in leaks.processes if " pid " in p}
        for child in _child_processes():
            if child.split()[1] not in known:
                leaks.processes.append(child)
    if baseline is not None:
        leaks.root_changes = RootSnapshot.take().added_since(baseline)
    return leaks


# --------------------------------------------------------------------------- cleanup


@dataclass
class CleanupReport:
    removed_namespaces: list[tuple[str, list[int]]] = field(default_factory=list)
    removed_links: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"removed namespace {ns}" + (f" (killed pids {pids})" if pids else "")
            for ns, pids in self.removed_namespaces
        ]
        lines += [f"removed root-namespace link {name}" for name in self.removed_links]
        lines += [f"killed {desc}" for desc in self.killed]
        lines += [
            f"kept {name} (owner still running; --force removes it)" for name in self.skipped_live
        ]
        lines += [f"error: {err}" for err in self.errors]
        return "\n".join(lines) if lines else "nothing to clean up"


def cleanup(
    prefix: str = NAME_PREFIX, *, force: bool = False, dry_run: bool = False
) -> CleanupReport:
    """Remove namespaces and root links under ``prefix`` whose owner is gone."""
    report = CleanupReport()
    owners: dict[str, bool] = {}

    def removable(name: str) -> bool:
        owner = owner_prefix(name)
        if owner is None:
            return False
        if owner not in owners:
            owners[owner] = owner_alive(owner)
        if owners[owner] and not force:
            report.skipped_live.append(name)
            return False
        return True

    for ns in list_netns(prefix):
        if not removable(ns):
            continue
        if dry_run:
            report.removed_namespaces.append((ns, netns_pids(ns)))
            continue
        try:
            report.removed_namespaces.append((ns, remove_netns(ns)))
        except (NetnsError, OSError) as exc:
            report.errors.append(f"{ns}: {exc}")
    for name in _root_links(prefix):
        if not removable(name):
            continue
        if not dry_run:
            result = run_local([tool("ip"), "link", "del", name])
            if not result.ok:
                report.errors.append(f"link {name}: {result.stderr.strip()}")
                continue
        report.removed_links.append(name)
    if not dry_run:
        for owner, alive in owners.items():
            if not alive or force:
                release_owner(owner)
        # Records of dead runs that left nothing behind.
        for owner in known_owners():
            if owner.startswith(prefix) and owner not in owners and not owner_alive(owner):
                release_owner(owner)
    return report


def kill_live_processes() -> list[str]:
    """Stop processes this interpreter spawned that are still running."""
    killed = []
    for proc in live_processes():
        killed.append(f"{proc.name} pid {proc.pid}")
        with contextlib.suppress(Exception):
            proc.stop()
    return killed
