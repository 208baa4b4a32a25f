"""Foreground commands with timeouts, background processes with readiness and logs.

Backend-neutral plumbing shared by every Host that runs local processes (a network
namespace is entered with ``ip netns exec``, which execs in place, so the pid we hold
*is* the program's pid).

Why a pump thread instead of letting the child write to its log file directly: a
readiness line must be awaited as an *event*.  The pump reads the child's output pipe,
appends it to the log file (flushed, so the file is always current for humans and for
failure reports), and notifies waiters on a condition variable; it also watches a
``pidfd`` so an exit wakes waiters at once.  Nothing here sleeps for a fixed time.

Every process gets its own session (``start_new_session``) so :meth:`LocalProcess.stop`
can signal the whole process group: daemons that fork helpers (danted, dnsmasq) leave no
orphans behind.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import selectors
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from harness.hosts.base import (
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SPAWN_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    CmdResult,
    CommandTimeout,
    LogLine,
    ProcessNotReady,
    Readiness,
    log_tail,
)
from harness.timescale import scaled
from ztun.proc import POLL_FIRST, POLL_MAX

__all__ = [
    "LocalProcess",
    "ReadinessProbe",
    "group_members",
    "interrupt_on",
    "live_processes",
    "merged_env",
    "proc_stats",
    "run_local",
    "wait_pids_gone",
]

READ_CHUNK = 65536
"""Bytes read from a child's pipe per wake-up."""

PROBE_INTERVAL_MIN, PROBE_INTERVAL_MAX = POLL_FIRST, POLL_MAX
"""Bounds of the back-off between probes of conditions the kernel cannot signal
(:data:`ztun.proc.POLL_FIRST`); a process's wait still ends at once if it exits (its
pidfd is watched by the pump)."""

ReadinessProbe = Callable[[Readiness], bool]
"""A backend's check for a non-log readiness condition (``True`` once satisfied)."""

_registry: weakref.WeakSet[LocalProcess] = weakref.WeakSet()

#: Signals a test run turns into KeyboardInterrupt (SIGTERM: harness.plugin) or stops on.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on(*signals: signal.Signals) -> None:
    """Make each of ``signals`` raise KeyboardInterrupt where its action is still the default.

    ``finally`` blocks and fixture finalizers (namespace removal) run on KeyboardInterrupt;
    on a signal's default action (terminate) they would not.  Signal handlers belong to the
    main thread: called from another (an embedded pytest), this does nothing.
    """
    for sig in signals:
        with contextlib.suppress(ValueError):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _raise_interrupt)


def start_thread_without_signals(thread: threading.Thread) -> None:
    """Start `thread` with STOP_SIGNALS blocked in it (a new thread inherits the mask).

    Python runs signal handlers in the main thread only. A process-directed SIGTERM that
    the kernel hands to a helper thread leaves the main thread asleep in select() until
    that returns by itself -- a `sleep 300` under test then ignores SIGTERM for minutes.
    Blocked here, the signal can only be delivered to the main thread.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_registry_lock = threading.Lock()


def merged_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The harness's environment plus ``extra``.

    ``PYTHONUNBUFFERED`` is set because a Python peer that block-buffers its stdout
    would never show the readiness line it printed.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_pids_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Await the exit of ``pids`` via pidfds; returns those still alive at the deadline."""
    fds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    try:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = set(fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, _ in poller.poll(remaining * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return sorted(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)


def proc_stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, comm in parentheses, the /proc/PID/stat fields after it) of every process
    still there when read: fields[0] is the state, [1] the parent, [2] the group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm_end = stat.rfind(")")
        yield int(entry), stat[stat.find("(") : comm_end + 1], stat[comm_end + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (zombies left out)."""
    return [pid for pid, _, f in proc_stats() if int(f[2]) == pgid and f[0] != "Z"]


def run_local(
    argv: Sequence[str],
    *,
    display_argv: Sequence[str] | None = None,
    timeout: float = DEFAULT_RUN_TIMEOUT,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
) -> CmdResult:
    """Run ``argv`` to completion; at ``timeout`` kill its process group.

    "Completion" is the *command's* exit, watched through a pidfd -- not EOF on its
    pipes: a command that starts a daemon (``setsid -f``, dnsmasq, danted) hands the
    daemon its stdout, and waiting for EOF would wait for the daemon.  What the command
    wrote before exiting is drained from the pipes; the daemon is left running
    (Host.close() kills whatever remains inside a host).

    ``display_argv`` is what results and errors report (the caller's command, not the
    backend wrapper around it).  Output is decoded as UTF-8 with replacement, because a
    tool printing a stray byte must not turn into a ``UnicodeDecodeError`` in a test.
    """
    shown = tuple(display_argv if display_argv is not None else argv)
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=merged_env(env),
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    try:
        for fd in buffers:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(pidfd, selectors.EVENT_READ)
        pending = memoryview(data) if data is not None else None
        stdin_fd = proc.stdin.fileno() if proc.stdin is not None else -1
        if proc.stdin is not None:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        deadline = time.monotonic() + timeout
        exited = False
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _drain_pipes(buffers)
                out, err = (bytes(b).decode(errors="replace") for b in buffers.values())
                raise CommandTimeout(shown, timeout, out, err)
            for key, _ in sel.select(remaining):
                fd = key.fd
                if fd == pidfd:
                    exited = True
                elif fd == stdin_fd and proc.stdin is not None:
                    pending = _feed(proc.stdin, pending, sel)
                elif not _read_some(fd, buffers[fd]):
                    sel.unregister(fd)
        proc.wait()
        _drain_pipes(buffers)
    except BaseException:
        # Timeout or KeyboardInterrupt mid-command: never leave the child running.
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        sel.close()
        os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    out, err = (bytes(b).decode(errors="replace") for b in buffers.values())
    return CmdResult(shown, proc.returncode, out, err)


def _read_some(fd: int, buffer: bytearray) -> bool:
    """Read what is available; False at EOF."""
    try:
        chunk = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return True
    buffer += chunk
    return bool(chunk)


def _drain_pipes(buffers: dict[int, bytearray]) -> None:
    """Take what an exited command left in its pipes, without waiting for EOF."""
    for fd, buffer in buffers.items():
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            buffer += chunk


def _feed(
    stdin: IO[bytes], pending: memoryview | None, sel: selectors.BaseSelector
) -> memoryview | None:
    """Write the next piece of input; close stdin when all is written (or unwanted)."""
    try:
        if pending:
            written = os.write(stdin.fileno(), pending)
            pending = pending[written:]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = None
    if not pending:
        sel.unregister(stdin.fileno())
        stdin.close()
        return None
    return pending


class LocalProcess:
    """A background child process with a live log and awaitable readiness.

    Implements :class:`harness.hosts.base.Process`.  Construct through a Host's
    ``spawn``; the constructor starts the process at once.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        display_argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        probe: ReadinessProbe | None = None,
    ) -> None:
        self._name = name
        self._log_path = log_path
        self.argv = tuple(display_argv if display_argv is not None else argv)
        self._probe = probe
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._partial = ""
        self._exited = False
        # Incremental: a multi-byte character split across two reads stays whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - owned by the pump thread
        self._popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=merged_env(env),
            start_new_session=True,
        )
        self._pidfd = os.pidfd_open(self._popen.pid)
        self.started_at = time.monotonic()
        self._pump = threading.Thread(
            target=self._pump_output, name=f"pump-{name}-{self._popen.pid}", daemon=True
        )
        start_thread_without_signals(self._pump)
        with _registry_lock:
            _registry.add(self)

    # ------------------------------------------------------------------ Process API

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def name(self) -> str:
        return self._name

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def returncode(self) -> int | None:
        with self._cond:
            if not self._exited:
                return None
        return self._popen.returncode

    def alive(self) -> bool:
        return self.returncode is None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process exits (woken by its pidfd via the pump)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._exited, timeout):
                raise TimeoutError(
                    f"process {self._name!r} (pid {self.pid}) still running after {timeout}s"
                )
        rc = self._popen.returncode
        assert rc is not None
        return rc

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the process itself (not its group): tcpdump flushes on SIGINT."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; idempotent."""
        if self.alive():
            _killpg(self.pid, signal.SIGTERM)
            try:
                self.wait(timeout)
            except TimeoutError:
                _killpg(self.pid, signal.SIGKILL)
                self.wait(timeout)
        # Helpers the leader forked may outlive it; the group dies with the leader, and
        # stop() returns only once they are really gone (SIGKILL is not instantaneous).
        members = group_members(self.pid)
        _killpg(self.pid, signal.SIGKILL)
        wait_pids_gone(members, timeout)
        self._pump.join(timeout)
        return self.wait(0)

    def log_text(self) -> str:
        with self._cond:
            return "".join(self._lines) + self._partial

    def wait_for(self, ready: Readiness, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        """Await ``ready``; raise :class:`ProcessNotReady` on exit or at the deadline
        (``timeout`` times the run's ``--time-scale``)."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        if isinstance(ready, LogLine):
            self._wait_log_line(ready, deadline, timeout)
        else:
            self._wait_probe(ready, deadline, timeout)

    def wait_output(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Await ``predicate(log_text)`` becoming true (re-checked on each new output).

        Returns False at the deadline or if the process exits without it; an extension
        beyond the Process protocol for conditions a single regex cannot express
        ("the third statistics line").
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate("".join(self._lines) + self._partial):
                    return True
                remaining = deadline - time.monotonic()
                if self._exited or remaining <= 0:
                    return False
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ internals

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self._popen.returncode}"
        return f"<LocalProcess {self._name} pid={self.pid} {state}>"

    def _not_ready(self, reason: str) -> ProcessNotReady:
        return ProcessNotReady(
            self._name,
            reason,
            log_path=self._log_path,
            log_tail=log_tail(self.log_text()),
            returncode=self._popen.returncode if self._exited else None,
        )

    def _wait_log_line(self, ready: LogLine, deadline: float, timeout: float) -> None:
        regex: re.Pattern[str] = ready.regex()
        scanned = 0
        with self._cond:
            while True:
                for line in self._lines[scanned:]:
                    if regex.search(line):
                        return
                scanned = len(self._lines)
                if self._exited:
                    # The final line may lack a newline.
                    if self._partial and regex.search(self._partial):
                        return
                    raise self._not_ready(
                        f"exited with status {self._popen.returncode} before {ready.describe()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._partial and regex.search(self._partial):
                        return
                    raise self._not_ready(f"no {ready.describe()} within {timeout:g}s")
                self._cond.wait(remaining)

    def _wait_probe(self, ready: Readiness, deadline: float, timeout: float) -> None:
        if self._probe is None:
            raise TypeError(f"{type(ready).__name__} needs a host probe; spawn via a Host")
        interval = PROBE_INTERVAL_MIN
        while True:
            if self._probe(ready):
                return
            with self._cond:
                if self._exited:
                    raise self._not_ready(
                        f"exited with status {self._popen.returncode} before {ready.describe()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._not_ready(f"no {ready.describe()} within {timeout:g}s")
                # Wakes early on exit (the pump notifies); otherwise a bounded back-off.
                self._cond.wait(min(interval, remaining))
            interval = min(interval * 2, PROBE_INTERVAL_MAX)

    def _pump_output(self) -> None:
        """Copy the pipe to the log and to waiters until the process has exited."""
        stdout = self._popen.stdout
        assert stdout is not None
        fd = stdout.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._pidfd, select.POLLIN)
        pipe_open = True
        try:
            while True:
                events = dict(poller.poll())
                if pipe_open and fd in events:
                    pipe_open = self._drain(fd)
                    if not pipe_open:
                        poller.unregister(fd)
                if self._pidfd in events:
                    # Exited: take what is already in the pipe (a grandchild holding
                    # it open must not keep us reading forever), then reap.
                    if pipe_open:
                        self._drain(fd)
                    self._popen.wait()
                    break
        finally:
            with self._cond:
                if self._partial:
                    self._lines.append(self._partial)
                    self._partial = ""
                self._exited = True
                self._cond.notify_all()
            self._log.close()
            stdout.close()
            os.close(self._pidfd)

    def _drain(self, fd: int) -> bool:
        """Read everything available; False once the pipe reached EOF."""
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self._log.write(chunk)
            self._log.flush()
            text = self._decoder.decode(chunk)
            with self._cond:
                parts = (self._partial + text).split("\n")
                self._partial = parts.pop()
                self._lines.extend(part + "\n" for part in parts)
                self._cond.notify_all()


def live_processes() -> list[LocalProcess]:
    """Processes this interpreter spawned that are still running (for the leak check)."""
    with _registry_lock:
        procs = list(_registry)
    return [p for p in procs if p.alive()]
