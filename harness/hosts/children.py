"""What hosts whose processes are children of the harness share: NetnsHost, LocalHost.

Their commands run on this machine (wrapped by :meth:`ChildHost.exec_argv` -- ``ip netns
exec NAME`` for a namespace, nothing for the machine itself), background processes are
:class:`~harness.proc.LocalProcess` children with one log per name, readiness is a
condition polled with a bounded back-off (no kernel offers an event for "a socket started
listening"), and files are this machine's files. Every deadline is multiplied by the
run's ``--time-scale`` (harness.timescale): a command or a start-up that takes 2 s here
takes 20 in an emulated guest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.hosts.base import (
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SPAWN_TIMEOUT,
    CmdResult,
    CommandFailed,
    LogLine,
    Process,
    Readiness,
)
from harness.proc import LocalProcess, run_local
from harness.timescale import scaled
from ztun.proc import poll_until

__all__ = ["ChildHost"]


class ChildHost:
    """The shared half of a Host whose processes are local children (subclass it)."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self._name = name
        self._log_dir = Path(log_dir)
        self._processes: list[LocalProcess] = []
        self._spawn_names: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def log_dir(self) -> Path:
        return self._log_dir

    @property
    def processes(self) -> list[Process]:
        """Every process spawned in this host (running or not), oldest first."""
        return list(self._processes)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as this machine runs it to run inside the host."""
        return list(argv)

    def is_ready(self, ready: Readiness) -> bool:
        """Check a non-log readiness condition once (subclasses)."""
        raise NotImplementedError

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_RUN_TIMEOUT,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        check: bool = False,
    ) -> CmdResult:
        result = run_local(
            self.exec_argv(argv), display_argv=argv, timeout=scaled(timeout), env=env, input=input
        )
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        ready: Readiness | None = None,
        timeout: float = DEFAULT_SPAWN_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        # Two processes with the same name get distinct logs (tcpdump-1, tcpdump-2...).
        count = self._spawn_names.get(name, 0)
        self._spawn_names[name] = count + 1
        stem = name if count == 0 else f"{name}-{count}"
        proc = LocalProcess(
            self.exec_argv(argv),
            name=name,
            log_path=self._log_dir / f"{stem}.log",
            display_argv=argv,
            env=env,
            probe=self.is_ready,
        )
        self._processes.append(proc)
        if ready is not None:
            try:
                proc.wait_for(ready, timeout)
            except BaseException:
                proc.stop()
                raise
        return proc

    def wait_ready(self, ready: Readiness, *, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        if isinstance(ready, LogLine):
            raise TypeError("LogLine belongs to a process: use Process.wait_for")
        timeout = scaled(timeout)
        # Polled: the kernel offers no event for "a socket started listening".
        if not poll_until(lambda: self.is_ready(ready), timeout):
            raise TimeoutError(f"{self._name}: no {ready.describe()} within {timeout:g}s")

    def read_file(self, path: str | Path) -> bytes:
        return Path(path).read_bytes()

    def write_file(self, path: str | Path, data: str | bytes) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)

    def stop_processes(self) -> None:
        """Stop spawned processes, newest first (clients before the servers they use)."""
        errors: list[BaseException] = []
        for proc in reversed(self._processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]
