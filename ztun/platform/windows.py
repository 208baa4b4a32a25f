"""Windows: the Wintun adapter, routes and addresses through IP Helper.

The engine reads the adapter from its reader thread (a Wintun session has no
descriptor, only a read event: `Device.wait_readable` waits on it and on a stop event
with WaitForMultipleObjects).  ``--auto-route`` is :class:`ztun.route.windows.WindowsRoutes`,
journaled in ``%ProgramData%\\ztun``; ``--dns`` sets the Wintun interface's DNS servers
(:class:`ztun.route.windows_dns.WindowsDns`), in the same journal.

Whether a journal's writer still runs is asked of kernel32 (OpenProcess,
GetExitCodeProcess, QueryFullProcessImageNameW): a live Python or ztun executable with
that pid counts as the writer (Windows gives another process's command line only
through WMI or the undocumented PEB, so the image name is what is checked).
"""

from __future__ import annotations

import ctypes
import ntpath
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..win32 import BOOL, DWORD, HANDLE, LPWSTR, Prototype, bind
from .base import Accelerations, Platform

if TYPE_CHECKING:
    from ..options import RunOptions
    from ..route import Journal
    from ..route.windows import WindowsRoutes
    from ..route.windows_dns import WindowsDns

PROCESS_QUERY_LIMITED_INFORMATION = 0x1000  # winnt.h
STILL_ACTIVE = 259  # minwinbase.h (STATUS_PENDING)
MAX_PATH_CHARS = 32768  # the longest \\?\ path, in WCHARs

PROCESS_PROTOTYPES: dict[str, Prototype] = {
    # HANDLE OpenProcess(DWORD dwDesiredAccess, BOOL bInheritHandle, DWORD dwProcessId)
    "OpenProcess": (HANDLE, [DWORD, BOOL, DWORD]),
    # BOOL GetExitCodeProcess(HANDLE hProcess, LPDWORD lpExitCode)
    "GetExitCodeProcess": (BOOL, [HANDLE, ctypes.POINTER(DWORD)]),
    # BOOL QueryFullProcessImageNameW(HANDLE, DWORD dwFlags, LPWSTR, PDWORD lpdwSize)
    "QueryFullProcessImageNameW": (BOOL, [HANDLE, DWORD, LPWSTR, ctypes.POINTER(DWORD)]),
    "CloseHandle": (BOOL, [HANDLE]),
}


def is_ztun_image(path: str) -> bool:
    """A ztun runs as ``ztun.exe`` (the console script) or under a Python executable."""
    name = ntpath.basename(path).lower()
    return name == "ztun.exe" or (name.startswith("python") and name.endswith(".exe"))


def process_image(kernel32: Any, pid: int) -> str | None:
    """The executable of live process `pid` (None: none, or it has exited)."""
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
        return buf.value
    finally:
        fn["CloseHandle"](handle)


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
        from ..route.windows_dns import WindowsDns

        return WindowsDns(journal, device=journal.path.stem)

    def is_ztun(self, pid: int) -> bool:  # pragma: no cover - Windows only (the hosted row)
        from ..win32 import windll

        image = process_image(windll("kernel32.dll"), pid)
        return image is not None and is_ztun_image(image)
