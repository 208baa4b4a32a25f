"""Running under a service manager: sd_notify(3) without libsystemd, and `--pid-file`.

systemd's `Type=notify` waits for `READY=1` on the datagram socket named by
`NOTIFY_SOCKET`; `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` requires)
and `READY=1` bracket a reload, `STOPPING=1` announces the end. The protocol is one
AF_UNIX datagram of `KEY=VALUE` lines (sd_notify(3)); a name starting with `@` is in the
abstract namespace (the `@` stands for the leading NUL byte). Without NOTIFY_SOCKET every
call is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("ztun")


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """The NOTIFY_SOCKET address as `socket.sendto` takes it, or None when unset."""
    name = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # abstract namespace: no file behind it
    if not name.startswith("/"):
        return None  # sd_notify(3) knows vsock: addresses too; ztun does not
    return name


def notify(*states: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `states` (`"READY=1"`, `"STATUS=..."`) to the service manager; False when there
    is none or the datagram could not be sent (never raises: a unit without Type=notify
    must not stop ztun)."""
    address = notify_address(env)
    if address is None:
        return False
    message = "\n".join(states).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited (PEP 446)
    try:
        sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", states[0], exc)
        return False
    finally:
        sock.close()
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else ()))


def reloading() -> bool:
    # Type=notify-reload wants the monotonic time of the reload's start with it.
    usec = time.monotonic_ns() // 1000  # CLOCK_MONOTONIC on Linux, as systemd reads it
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


class PidFileBusy(OSError):
    """The pid file names a live process: another ztun with this pid file runs."""


class PidFile:
    """`--pid-file PATH`: our pid while we run; removed at exit if it is still ours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written = False

    def write(self, pid: int | None = None) -> None:
        pid = pid or os.getpid()
        existing = self._read()
        if existing is not None and existing != pid and _alive(existing):
            raise PidFileBusy(errno.EEXIST, f"{self.path}: pid {existing} is running")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a reader never sees a half-written pid.
        temporary = self.path.with_name(f".{self.path.name}.{pid}")
        temporary.write_text(f"{pid}\n")
        os.replace(temporary, self.path)
        self._written = True

    def _read(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        if self._written and self._read() == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._written = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
