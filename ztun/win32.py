"""The Windows API through ctypes: C types as the headers name them, prototype tables
bound onto a DLL (or onto a test's recording fake with the same export names), loading.

Only :func:`windll` and :func:`last_error` need Windows; everything else imports and
runs anywhere, which is what lets the Wintun and IP Helper layers be tested here.
"""

from __future__ import annotations

import ctypes
import errno
import sys
from collections.abc import Callable
from ctypes import c_int, c_uint8, c_uint32, c_void_p
from typing import Any

from ztun.tun.base import DeviceError

# DWORD and ULONG are 32-bit on Windows (ctypes.wintypes.DWORD is c_ulong, 64-bit on
# Linux, so they are spelled out); handles are pointers.
DWORD = c_uint32
ULONG = c_uint32
BOOL = c_int
BOOLEAN = c_uint8
HANDLE = c_void_p
LPCWSTR = ctypes.c_wchar_p
LPWSTR = ctypes.c_wchar_p
NETIO_STATUS = DWORD  # netioapi.h: a Win32 error code
NET_IFINDEX = c_uint32  # ifdef.h
SIZE_T = ctypes.c_size_t

Prototype = tuple[Any, list[Any]]  # (restype, argtypes)


def bind(library: Any, prototypes: dict[str, Prototype]) -> dict[str, Any]:
    """Set restype/argtypes on each named function of ``library`` (a ctypes DLL, or any
    object with those attributes) and return them by name. A missing export fails here,
    at load time, with its name -- not at the first packet."""
    table: dict[str, Any] = {}
    for name, (restype, argtypes) in prototypes.items():
        try:
            fn = getattr(library, name)
        except AttributeError as exc:
            raise DeviceError(errno.ENOSYS, f"{name} is missing from the DLL") from exc
        fn.restype = restype
        fn.argtypes = argtypes
        table[name] = fn
    return table


def windll(name: str) -> Any:
    """``WinDLL(name)`` with the thread's last error kept for :func:`last_error`."""
    if sys.platform != "win32":
        raise DeviceError(errno.ENOTSUP, f"{name} exists only on Windows")
    try:
        return ctypes.WinDLL(name, use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    except OSError as exc:
        raise DeviceError(errno.ENOENT, f"cannot load {name}: {exc}") from exc


def last_error() -> int:
    get: Callable[[], int] = ctypes.get_last_error  # type: ignore[attr-defined,unused-ignore]
    return get()
