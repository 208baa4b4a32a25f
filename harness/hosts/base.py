"""The Host contract: what a test may do to a machine, whatever backs it.

A test talks to a *Host* (a network namespace today, a QEMU VM or a Vagrant box later)
only through this protocol, so the same test runs on every backend.  The protocol is
deliberately small -- run a command, start a background process and await its
readiness, read/write files, open a socket "inside" -- because every backend has to
implement it over very different transports (``ip netns exec``, ssh, winrm).

Rules every backend follows (STYLE.md #11):

* every command has a timeout; a timeout raises :class:`CommandTimeout` carrying what the
  command printed so far;
* every background process writes stdout+stderr to a log file under the host's log
  directory, so a failing test can attach it;
* readiness is awaited on an event (a log line, a listening socket, a path), never on a
  fixed sleep; a process that exits or misses its deadline raises
  :class:`ProcessNotReady` with the tail of its log.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_SPAWN_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "CmdResult",
    "CommandFailed",
    "CommandTimeout",
    "Host",
    "IfAddress",
    "LinkExists",
    "LogLine",
    "PathExists",
    "Process",
    "ProcessNotReady",
    "Readiness",
    "TcpListening",
    "UdpListening",
]

DEFAULT_RUN_TIMEOUT = 30.0
"""Seconds a foreground command may take unless the caller says otherwise."""

DEFAULT_SPAWN_TIMEOUT = 15.0
"""Seconds a background process gets to become ready."""

DEFAULT_STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL when stopping a process."""

LOG_TAIL_LINES = 40
"""How much of a log an error message quotes: enough to see the failure, not a wall."""

IfAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface
"""An address with its prefix, as ``ip addr`` shows it (``10.200.1.1/24``)."""


# --------------------------------------------------------------------------- results


class CommandFailed(RuntimeError):
    """A command exited non-zero and the caller asked for ``check=True``."""

    def __init__(self, result: CmdResult) -> None:
        self.result = result
        super().__init__(
            f"command {result.command_line!r} exited {result.returncode}\n"
            f"stdout: {_tail(result.stdout)}\nstderr: {_tail(result.stderr)}"
        )


class CommandTimeout(TimeoutError):
    """A command ran past its timeout; it has been killed.

    Carries the partial output: the last thing a hung command printed is usually the
    reason it hung.
    """

    def __init__(self, argv: Sequence[str], timeout: float, stdout: str, stderr: str) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(self.argv)!r} did not finish within {timeout:g}s "
            f"(killed)\nstdout: {_tail(stdout)}\nstderr: {_tail(stderr)}"
        )


@dataclass(frozen=True, slots=True)
class CmdResult:
    """The outcome of :meth:`Host.run`.

    ``argv`` is the command as the caller gave it (without the backend's wrapper such as
    ``ip netns exec NAME``), so messages read like the test.
    """

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command_line(self) -> str:
        return " ".join(self.argv)

    def check(self) -> CmdResult:
        """Return self, or raise :class:`CommandFailed` if the command failed."""
        if self.returncode != 0:
            raise CommandFailed(self)
        return self


# --------------------------------------------------------------------------- readiness


@dataclass(frozen=True, slots=True)
class LogLine:
    """Ready once a line of the process's output matches ``pattern`` (``re.search``)."""

    pattern: str | re.Pattern[str]

    def regex(self) -> re.Pattern[str]:
        return self.pattern if isinstance(self.pattern, re.Pattern) else re.compile(self.pattern)

    def describe(self) -> str:
        text = self.pattern.pattern if isinstance(self.pattern, re.Pattern) else self.pattern
        return f"log line matching {text!r}"


@dataclass(frozen=True, slots=True)
class TcpListening:
    """Ready once a TCP socket in LISTEN state is bound to ``port`` inside the host.

    ``family`` restricts the check to IPv4 (``socket.AF_INET``) or IPv6
    (``socket.AF_INET6``); ``None`` accepts either.
    """

    port: int
    family: socket.AddressFamily | None = None

    def describe(self) -> str:
        return f"TCP listener on port {self.port}"


@dataclass(frozen=True, slots=True)
class UdpListening:
    """Ready once a UDP socket is bound to ``port`` inside the host."""

    port: int
    family: socket.AddressFamily | None = None

    def describe(self) -> str:
        return f"UDP socket bound to port {self.port}"


@dataclass(frozen=True, slots=True)
class PathExists:
    """Ready once ``path`` exists *as the host sees it* (a pid file, a UNIX socket, a
    device node, ``/sys/class/net/NAME``): checked inside the host, so a namespace's own
    ``/sys`` and a guest's file system count, not the harness's mount namespace."""

    path: str | Path

    def describe(self) -> str:
        return f"path {str(self.path)!r} exists"


@dataclass(frozen=True, slots=True)
class LinkExists:
    """Ready once a network interface ``name`` exists in the host (a TUN the process
    under test creates itself, whatever it prints)."""

    name: str

    def describe(self) -> str:
        return f"link {self.name!r} exists"


Readiness = LogLine | TcpListening | UdpListening | PathExists | LinkExists
"""A condition :meth:`Host.spawn` awaits before returning."""


class ProcessNotReady(RuntimeError):
    """A spawned process exited, or missed its readiness deadline.

    The message carries the tail of the process's log, because "not ready" alone
    never says why.
    """

    def __init__(
        self,
        name: str,
        reason: str,
        *,
        log_path: Path | None = None,
        log_tail: str = "",
        returncode: int | None = None,
    ) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        self.log_tail = log_tail
        self.returncode = returncode
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(
            f"process {name!r} not ready: {reason}{where}\n--- log tail ---\n{log_tail}"
        )


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Process(Protocol):
    """A background process started by :meth:`Host.spawn`."""

    @property
    def pid(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def returncode(self) -> int | None:
        """Exit status once the process ended (negative: killed by that signal), else None."""
        ...

    def alive(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; raises ``TimeoutError`` if still running at ``timeout``."""
        ...

    def send_signal(self, sig: signal.Signals) -> None: ...

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status. Idempotent."""
        ...

    def log_text(self) -> str:
        """Everything the process printed so far (stdout and stderr interleaved)."""
        ...

    def wait_for(self, ready: Readiness, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        """Await another readiness condition after start (e.g. a second log line)."""
        ...


@runtime_checkable
class Host(Protocol):
    """A machine a test runs commands on; see the module docstring for the rules."""

    @property
    def name(self) -> str: ...

    @property
    def log_dir(self) -> Path:
        """Where logs of this host's processes are written (under the test's artifacts)."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_RUN_TIMEOUT,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        check: bool = False,
    ) -> CmdResult:
        """Run ``argv`` to completion inside the host.

        ``env`` entries are *added* to the harness's environment. Raises
        :class:`CommandTimeout` past ``timeout`` and, with ``check=True``,
        :class:`CommandFailed` on a non-zero exit.
        """
        ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        ready: Readiness | None = None,
        timeout: float = DEFAULT_SPAWN_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start ``argv`` in the background, log to ``log_dir/<name>.log``, await ``ready``.

        The host owns the process: :meth:`close` stops whatever is still running.
        """
        ...

    def read_file(self, path: str | Path) -> bytes: ...

    def write_file(self, path: str | Path, data: str | bytes) -> None: ...

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A socket that lives inside the host (its routes, addresses and firewall)."""
        ...

    def interfaces(self) -> list[str]:
        """Names of the host's network interfaces (``lo`` included)."""
        ...

    def addresses(self, ifname: str | None = None) -> list[IfAddress]:
        """Addresses (with prefix) on ``ifname``, or on every interface."""
        ...

    def wait_ready(self, ready: Readiness, *, timeout: float = DEFAULT_SPAWN_TIMEOUT) -> None:
        """Await a readiness condition not tied to a process (e.g. a port opened elsewhere).

        Raises ``TimeoutError`` at the deadline.
        """
        ...

    def close(self) -> None:
        """Stop every process of the host and release it (idempotent)."""
        ...


# --------------------------------------------------------------------------- helpers


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, for error messages."""
    parts = text.rstrip("\n").splitlines()
    if len(parts) <= lines:
        return "\n".join(parts)
    return "\n".join(["...", *parts[-lines:]])


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """Public spelling of the tail helper, for backends and peers."""
    return _tail(text, lines)


def completed_to_result(argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> CmdResult:
    """Adapt a ``subprocess`` result, keeping the caller's argv (not the wrapper's)."""
    return CmdResult(tuple(argv), done.returncode, done.stdout or "", done.stderr or "")
