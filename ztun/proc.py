"""Background processes and bounded commands inside namespaces (`ztun demo`, `ztun bench`).

Every command has a timeout and every start waits for an event (a listening socket, a log
line, an interface) with a deadline, like kselftest's `bkg` helpers; a process that dies
while we wait is reported with its log tail instead of a bare timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ztun.tools import tool

from . import netns

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LOG_TAIL = 1500
POLL_FIRST, POLL_MAX = 0.005, 0.1  # seconds: readiness polls start fast and back off
"""Bounds of the back-off between polls of conditions the kernel cannot signal (no
inotify in the stdlib, no netlink event for LISTEN): from 5 ms, so fast servers cost
nothing, doubling up to 100 ms, so slow ones do not burn a CPU."""


class ProcError(RuntimeError):
    """A step failed; the message says which and carries the evidence (log tail)."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        return self.log_text()[-LOG_TAIL:]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL: a tun2socks gets the chance to remove its TUN itself."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)


def poll_until(
    condition: Callable[[], bool],
    timeout: float,
    *,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Poll a condition that has no event to wait on (a socket starting to listen, a
    link's carrier): at POLL_FIRST, doubling up to POLL_MAX, so a fast one costs
    nothing and a slow one burns no CPU. True once it holds; False at the deadline or
    as soon as `stop()` is true (what we wait for has died)."""
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST
    while not condition():
        if stop is not None and stop():
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))  # noqa: sleep-ok - the condition has no event
        delay = min(delay * 2, POLL_MAX)
    return True


def await_condition(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """`poll_until`, raising ProcError at the deadline or when `abort` returns a reason
    to stop early (the process we wait for has died)."""
    reasons: list[str] = []

    def aborted() -> bool:
        reason = abort() if abort else None
        if reason:
            reasons.append(reason)
        return bool(reason)

    if poll_until(condition, timeout, stop=aborted):
        return
    if reasons:
        raise ProcError(f"{what}: {reasons[0]}")
    raise ProcError(f"timed out after {timeout:g}s waiting for {what}")


def spawn(
    ns: str,
    argv: Sequence[str],
    *,
    name: str,
    workdir: str,
    ready: Callable[[Proc], bool],
    timeout: float = READY_TIMEOUT,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start `argv` in namespace `ns` (logs to workdir/name.log) and wait until `ready`."""
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            netns.exec_argv(ns, argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    proc = Proc(name, popen, log_path)

    def died() -> str | None:
        if proc.alive():
            return None
        return f"exited with {proc.popen.returncode}:\n{proc.log_tail()}"

    try:
        await_condition(lambda: ready(proc), timeout, f"{name} to get ready", abort=died)
    except BaseException:
        proc.stop()
        raise
    return proc


def run(
    ns: str,
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a client command to completion in `ns`, bounded by `timeout`."""
    try:
        result = subprocess.run(
            netns.exec_argv(ns, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcError(f"{argv[0]} did not finish within {timeout:g}s") from exc
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout)[-LOG_TAIL:]
        raise ProcError(f"{' '.join(argv[:3])}... exited with {result.returncode}: {tail.strip()}")
    return result


def log_has(pattern: str) -> Callable[[Proc], bool]:
    regex = re.compile(pattern)
    return lambda proc: bool(regex.search(proc.log_text()))


def listening(ns: str, port: int, *, udp: bool = False) -> Callable[[Proc], bool]:
    """Ready when something in `ns` listens on `port` (read from the kernel, not guessed)."""

    def check(_proc: Proc | None = None) -> bool:
        out = subprocess.run(
            netns.exec_argv(ns, [tool("ss"), "-Hln" + ("u" if udp else "t"), f"sport = :{port}"]),
            capture_output=True,
            text=True,
            timeout=10,
        )
        return bool(out.stdout.strip())

    return check


def link_exists(ns: str, ifname: str) -> Callable[[Proc], bool]:
    def check(_proc: Proc | None = None) -> bool:
        out = subprocess.run(
            netns.exec_argv(ns, [tool("ip"), "-o", "link", "show", "dev", ifname]),
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.returncode == 0 and ",UP" in out.stdout

    return check


def stop_all(procs: Sequence[Proc]) -> None:
    for proc in reversed(procs):
        with contextlib.suppress(OSError):
            proc.stop()
