"""Windows: the Wintun adapter, routes and addresses through IP Helper.

The engine reads the adapter from its reader thread (a Wintun session has no
descriptor, only a read event: `Device.wait_readable` waits on it and on a stop event
with WaitForMultipleObjects).  ``--auto-route`` is :class:`ztun.route.windows.WindowsRoutes`,
journaled in ``%ProgramData%\\ztun``; ``--dns`` sets the Wintun interface's DNS servers
(:class:`ztun.route.windows.WindowsDns`), in the same journal.

Whether a journal's writer still runs is asked of kernel32 (OpenProcess,
GetExitCodeProcess, QueryFullProcessImageNameW, GetProcessTimes): the writer is a live
process with the journal's pid, a Python or ztun executable as its image (Windows gives
another process's command line only through WMI or the undocumented PEB), created no
later than the journal was begun -- Windows reuses pids soon, and a ztun started since
with the dead writer's pid is not its writer.
"""

from __future__ import annotations

import ctypes
import ntpath
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..win32 import BOOL, DWORD, HANDLE, LPWSTR, Prototype, bind
from .base import Accelerations, Platform

if TYPE_CHECKING:
    from ..options import RunOptions
    from ..route import Journal
    from ..route.windows import WindowsDns, WindowsRoutes

PROCESS_QUERY_LIMITED_INFORMATION = 0x1000  # winnt.h
STILL_ACTIVE = 259  # minwinbase.h (STATUS_PENDING)
#: FILETIME counts 100 ns intervals since 1601-01-01 (UTC); Unix time since 1970-01-01.
FILETIME_UNIX_EPOCH = 116444736000000000
FILETIME_PER_SECOND = 10_000_000
#: Clock granularity between the journal's time.time() and the process creation time.
CREATION_SLACK = 1.0
MAX_PATH_CHARS = 32768  # the longest \\?\ path, in WCHARs


class FILETIME(ctypes.Structure):
    """minwinbase.h FILETIME: DWORD dwLowDateTime @0, DWORD dwHighDateTime @4."""

    _fields_ = [("dwLowDateTime", DWORD), ("dwHighDateTime", DWORD)]

    def unix(self) -> float:
        ticks: int = (self.dwHighDateTime << 32) | self.dwLowDateTime
        return (ticks - FILETIME_UNIX_EPOCH) / FILETIME_PER_SECOND


PROCESS_PROTOTYPES: dict[str, Prototype] = {
    # HANDLE OpenProcess(DWORD dwDesiredAccess, BOOL bInheritHandle, DWORD dwProcessId)
    "OpenProcess": (HANDLE, [DWORD, BOOL, DWORD]),
    # BOOL GetExitCodeProcess(HANDLE hProcess, LPDWORD lpExitCode)
    "GetExitCodeProcess": (BOOL, [HANDLE, ctypes.POINTER(DWORD)]),
    # BOOL QueryFullProcessImageNameW(HANDLE, DWORD dwFlags, LPWSTR, PDWORD lpdwSize)
    "QueryFullProcessImageNameW": (BOOL, [HANDLE, DWORD, LPWSTR, ctypes.POINTER(DWORD)]),
    # BOOL GetProcessTimes(HANDLE, LPFILETIME lpCreationTime, LPFILETIME lpExitTime,
    #                      LPFILETIME lpKernelTime, LPFILETIME lpUserTime)
    "GetProcessTimes": (BOOL, [HANDLE, *[ctypes.POINTER(FILETIME)] * 4]),
    "CloseHandle": (BOOL, [HANDLE]),
}


def is_ztun_image(path: str) -> bool:
    """A ztun runs as ``ztun.exe`` (the console script) or under a Python executable."""
    name = ntpath.basename(path).lower()
    return name == "ztun.exe" or (name.startswith("python") and name.endswith(".exe"))


def process_image(kernel32: Any, pid: int) -> str | None:
    """The executable of live process `pid` (None: none, or it has exited)."""
    found = process_identity(kernel32, pid)
    return found[0] if found is not None else None


def process_identity(kernel32: Any, pid: int) -> tuple[str, float] | None:
    """The executable of live process `pid` and when it was created (Unix time); None:
    no such process, or it has exited."""
    fn = bind(kernel32, PROCESS_PROTOTYPES)
    handle = fn["OpenProcess"](PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return None
    try:
        code = DWORD()
        if not fn["GetExitCodeProcess"](handle, ctypes.byref(code)) or code.value != STILL_ACTIVE:
            return None
        buf = ctypes.create_unicode_buffer(MAX_PATH_CHARS)
        size = DWORD(MAX_PATH_CHARS)
        if not fn["QueryFullProcessImageNameW"](handle, 0, buf, ctypes.byref(size)):
            return None
        created, exited, kernel, user = FILETIME(), FILETIME(), FILETIME(), FILETIME()
        times = [ctypes.byref(t) for t in (created, exited, kernel, user)]
        if not fn["GetProcessTimes"](handle, *times):
            return None
        return buf.value, created.unix()
    finally:
        fn["CloseHandle"](handle)


def is_writer(identity: tuple[str, float] | None, begun: float | None) -> bool:
    """Whether a process (its image and creation time) can have begun a journal at
    `begun` (None: a journal older than that record; the image alone decides)."""
    if identity is None or not is_ztun_image(identity[0]):
        return False
    return begun is None or identity[1] <= begun + CREATION_SLACK


class WindowsPlatform(Platform):
    name = "windows"

    @property
    def state_dir(self) -> Path:
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "ztun"

    def probe(self, opts: RunOptions) -> Accelerations:
        return Accelerations(tun_reader="thread")  # Wintun: an event handle, no descriptor

    def routes(self, journal: Journal) -> WindowsRoutes:
        from ..route.windows import WindowsRoutes

        return WindowsRoutes(journal)

    def dns(self, journal: Journal) -> WindowsDns:
        from ..route.windows import WindowsDns

        return WindowsDns(journal, device=journal.path.stem)

    def is_ztun(self, pid: int) -> bool:  # pragma: no cover - Windows only (the hosted row)
        from ..win32 import windll

        image = process_image(windll("kernel32.dll"), pid)
        return image is not None and is_ztun_image(image)

    def live_owner(self, journal: Journal) -> int | None:  # pragma: no cover - Windows only
        from ..win32 import windll

        return writer_alive(journal, lambda pid: process_identity(windll("kernel32.dll"), pid))


def writer_alive(
    journal: Journal, identity: Callable[[int], tuple[str, float] | None]
) -> int | None:
    """`Platform.live_owner` on Windows: the journal's pid when `identity(pid)` (image,
    creation time) says that process is its writer, still running."""
    try:
        state = journal.read()
    except Exception:  # an unreadable journal is recover()'s to report
        return None
    pid = state.pid
    if not pid or pid == os.getpid():
        return None
    return pid if is_writer(identity(pid), state.begun) else None
