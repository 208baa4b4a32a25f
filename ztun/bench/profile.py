"""`ztun bench --profile DIR`: a py-spy profile of ztun during each figure it runs.

py-spy (the `bench` extra) samples the running process from outside -- no change to
ztun, its workers included (`--subprocesses`) -- and writes the collapsed stacks
(`<system>-<figure>-r<rep>.txt`, one "frame;frame;... count" line per stack, what
flame-graph tools read). Beside each, `.summary` lists the frames by the share of samples
they appear in (inclusive), and how many samples found ztun waiting in its event loop's
poll: the part of the wall clock it was idle. Samples are taken with `--idle` so the
shares are of wall-clock time, not of CPU time.

A profiled figure runs with the sampler attached (non-blocking, 250 Hz): its numbers
are near, not equal, to an unprofiled run's, so the table of a profiled run is for
reading the profile beside, not for the record.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ..tools import which

RATE_HZ = 250
STOP_TIMEOUT = 30.0
TOP_FRAMES = 60
#: The innermost frames of a thread waiting for events (the loop's poll, a selector).
_WAITING = ("select (selectors.py", "poll (selectors.py", "_PollLikeSelector.select")


def py_spy() -> str | None:
    """py-spy's path (the venv's script beside this Python first), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return which("py-spy")


def summarize(collapsed: str) -> str:
    """Frames by inclusive share of samples, and the share spent waiting in a poll."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in _WAITING):
            waiting += samples
        seen = set()
        for frame in frames:
            name = frame.split(" (", 1)[0]
            if name not in seen:
                seen.add(name)
                inclusive[name] += samples
    if total == 0:
        return "no samples\n"
    lines = [f"{total} samples, {100 * waiting / total:.0f}% waiting in the event loop's poll"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(TOP_FRAMES)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def profiled(pid: int | None, out: Path | None) -> Iterator[None]:
    """Record `pid` (and its children) with py-spy into `out` while the body runs;
    nothing when either is None or py-spy is not installed."""
    spy = py_spy() if pid is not None and out is not None else None
    if spy is None or out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
    argv += ["--output", str(out), "--nonblocking", "--idle", "--subprocesses"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            summary = summarize(out.read_text())
            out.with_suffix(".summary").write_text(summary)
        elif proc.stderr is not None:
            error = proc.stderr.read().decode(errors="replace").strip()
            out.with_suffix(".summary").write_text(f"py-spy wrote nothing: {error}\n")
        if proc.stderr is not None:
            proc.stderr.close()


def profile_path(folder: str | None, system: str, test: str, rep: int) -> Path | None:
    """Where a figure's profile goes (None: not profiling this one: only ztun systems,
    and not `rss`, which restarts the process it would be sampling)."""
    if folder is None or not system.startswith("ztun") or test == "rss":
        return None
    return Path(folder) / f"{system}-{test}-r{rep}.txt"


__all__ = ["profile_path", "profiled", "py_spy", "summarize"]

if os.name != "posix":  # pragma: no cover - the bench is Linux-only
    raise ImportError("ztun bench runs on Linux")
