"""CPU time and resident memory of a process tree, and the whole machine's CPU, from /proc.

A tree, not one pid: a tun2socks may run worker processes (ztun `--workers N`), and the
bill is theirs together. CPU is utime+stime of the live processes plus cutime+cstime of
the root (children it has reaped), in clock ticks converted to seconds.

The machine's CPU (/proc/stat) is what every process and the kernel spent, softirq
included: a tun2socks that moves its work into the kernel (ztun's kernel NAT, sing-box's
own stack in the kernel) shows there what its own process no longer pays.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
# Fields of /proc/PID/stat after the ")" that ends the command name (0-based there):
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """`root` and its live descendants (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[_PPID]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    ticks = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if not fields:
            continue
        ticks += int(fields[_UTIME]) + int(fields[_STIME])
        if pid == root:
            ticks += int(fields[_CUTIME]) + int(fields[_CSTIME])
    return ticks / CLOCK_TICKS


# /proc/stat "cpu" line: user nice system idle iowait irq softirq steal [guest guest_nice];
# guest time is already counted in user, so it is not added again.
_BUSY = (0, 1, 2, 5, 6, 7)


def machine_cpu_seconds(stat: str | None = None) -> float:
    """Busy CPU seconds of all CPUs since boot (everything but idle and iowait)."""
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.readline()
    fields = stat.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"/proc/stat: no total cpu line in {stat[:40]!r}")
    values = [int(v) for v in fields[1:]]
    return sum(values[i] for i in _BUSY if i < len(values)) / CLOCK_TICKS


def rss_bytes(root: int) -> int:
    """Resident set of the tree (statm's resident pages; shared pages counted per process)."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return total


def open_fds(root: int) -> int:
    """Descriptors the tree holds open (/proc/PID/fd entries)."""
    total = 0
    for pid in tree(root):
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
