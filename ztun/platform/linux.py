"""Linux: the TUN with offloads and queues, routes over rtnetlink, nftables redirect.

Netlink work (TUN configuration, routes) runs in a forked child (`ztun.forked`), so the
long-running process never imports pyroute2. A journal is named after the device and
the network namespace it was made in (the namespace's inode): `ztun cleanup` restores
only the ones of the namespace it runs in.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .base import PORTABLE, Accelerations, JournalScope, Platform, UnsupportedPlatform

if TYPE_CHECKING:
    from ..kernelnat import KernelNat
    from ..options import RunOptions
    from ..route import AutoRouteConfig, Journal
    from ..route.model import RestoreReport
    from ..tun import Device

RouteJob = Literal["apply", "restore", "recover"]
#: setsockopt UDP_SEGMENT (linux/udp.h; Linux 4.18): the uplink's GSO sends.
UDP_SEGMENT = 103


def netns_id() -> int:
    """The inode of this process's network namespace: names a journal per namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def process_argv(pid: int) -> list[bytes] | None:
    """The command line of `pid` (None: no such process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def ztun_argv(pid: int) -> list[bytes] | None:
    """The command line of `pid` if it is a live ztun process, else None."""
    argv = process_argv(pid)
    return argv if argv is not None and any(b"ztun" in arg for arg in argv) else None


def has_splice() -> bool:
    return hasattr(os, "splice") and hasattr(os, "pipe2")


def has_udp_gso() -> bool:
    """Whether the kernel knows UDP_SEGMENT (a getsockopt ENOPROTOOPT says it does not)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


def _route_job(what: RouteJob, journal: Journal, plan: Any = None) -> Any:
    """Runs in a netlink child (ztun.forked): only there is pyroute2 imported."""
    from ..route import linux

    if what == "apply":
        return linux.apply(plan, journal)
    return linux.recover(journal) if what == "recover" else linux.restore(journal)


class LinuxRoutes:
    """Policy routing (`ztun.route.plan`) applied over rtnetlink in a forked child."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def _in_child(self, what: RouteJob, plan: Any = None) -> Any:
        from ..forked import call_in_child

        return call_in_child(lambda: _route_job(what, self.journal, plan))

    def apply(self, cfg: AutoRouteConfig) -> int:
        from ..route import plan_auto_route

        plan = plan_auto_route(cfg)
        self._in_child("apply", plan)
        return len(plan)

    def restore(self) -> RestoreReport:
        report: RestoreReport = self._in_child("restore")
        return report

    def recover(self) -> RestoreReport | None:
        report: RestoreReport | None = self._in_child("recover")
        return report


class LinuxPlatform(Platform):
    name = "linux"

    @property
    def state_dir(self) -> Path:
        return Path("/run/ztun")

    def probe(self, opts: RunOptions) -> Accelerations:
        if opts.portable:
            return PORTABLE
        return Accelerations(
            splice=opts.splice and has_splice(),
            # What was asked; app.py corrects it to what the device granted once open.
            vnet_hdr=opts.offload,
            multi_queue=opts.workers > 1,
            udp_gso=has_udp_gso(),
            redirect=opts.redirect,
            # What was asked; app.py turns it off if the program cannot be attached.
            kernel_nat=opts.kernel_nat,
            tun_reader="thread" if opts.tun_thread else "loop",
        )

    def journal_path(self, device_name: str) -> Path:
        return super().journal_path(f"{device_name}_{netns_id()}")

    def journal_scope(self, path: Path) -> JournalScope:
        owner = path.name.removesuffix(".journal").rpartition("_")[2]
        if owner.isdigit() and int(owner) not in _live_netns_inodes():
            return JournalScope.GONE
        return JournalScope.HERE if owner == str(netns_id()) else JournalScope.ELSEWHERE

    def routes(self, journal: Journal) -> LinuxRoutes:
        return LinuxRoutes(journal)

    def is_ztun(self, pid: int) -> bool:
        return ztun_argv(pid) is not None

    def install_redirect(self, device_name: str, port: int) -> None:
        from ..redirect import install

        install(device_name, port)

    def remove_redirect(self, device_name: str) -> None:
        from ..redirect import remove

        remove(device_name)

    def start_kernel_nat(self, device: Device) -> KernelNat:
        from ..kernelnat import KernelNat
        from ..tun.linux import LinuxTun

        # The program reads an IP header at offset 0: a TUN this process opened (an
        # inherited fd:// descriptor might be a TAP, and has no interface index here).
        if not isinstance(device, LinuxTun):
            raise UnsupportedPlatform(f"the kernel NAT needs a tun:// device, not {device.name}")
        return KernelNat.start(device.index)

    def cleanup_extras(self, say: Callable[[str], None]) -> int:
        from .. import netns
        from ..demo import PREFIX
        from ..redirect import TABLE_PREFIX, leftover_tables, remove_table

        for table in leftover_tables():
            if _running_ztun_on(table.removeprefix(TABLE_PREFIX)):
                say(f"nftables table inet {table} belongs to a running ztun; left alone")
                continue
            remove_table(table)
            say(f"removed nftables table inet {table}")
        removed = 0
        # ztun demo's and ztun bench's namespaces; a name carries its creator's pid, so a
        # demo or bench still running keeps its namespaces.
        for name in [*netns.list_names(PREFIX), *netns.list_names("ztbench-")]:
            if _creator_alive(name):
                say(f"{name} belongs to a running demo/bench; left alone")
                continue
            netns.remove(name)
            say(f"removed namespace {name}")
            removed += 1
        return removed


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
