"""The Windows API through ctypes: C types as the headers name them, prototype tables
bound onto a DLL (or onto a test's recording fake with the same export names), loading.

Only :func:`windll` and :func:`last_error` need Windows; everything else imports and
runs anywhere, which is what lets the Wintun and IP Helper layers be tested here. The
error codes and the structures both layers pass (GUID, NET_LUID, SOCKADDR_INET) live
here, so neither layer imports the other for them.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import sys
import uuid
from collections.abc import Callable
from ctypes import c_int, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
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


# -- winerror.h: the Win32 error codes ztun tests for ------------------------------------
NO_ERROR = 0
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_DATA = 13
ERROR_HANDLE_EOF = 38
ERROR_BROKEN_PIPE = 109
ERROR_BUFFER_OVERFLOW = 111
ERROR_NO_DATA = 232
ERROR_NO_MORE_ITEMS = 259
ERROR_PIPE_CONNECTED = 535
ERROR_NOT_FOUND = 1168
ERROR_NETWORK_UNREACHABLE = 1231
ERROR_HOST_UNREACHABLE = 1232
ERROR_OBJECT_ALREADY_EXISTS = 5010

# -- structures shared by the device (ztun.tun.windows) and routing (ztun.route.windows)
# layers: guiddef.h, ifdef.h, ws2def.h / ws2ipdef.h (x64 layouts, checked in the tests)
WIN_AF_INET = 2  # ws2def.h
WIN_AF_INET6 = 23
INFINITE_LIFETIME = 0xFFFFFFFF  # netioapi.h: a route or address that never expires

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GUID(ctypes.Structure):
    """guiddef.h GUID: Data1..3 little-endian, Data4 as bytes (``uuid.UUID.bytes_le``)."""

    _fields_ = [
        ("Data1", c_uint32),
        ("Data2", c_uint16),
        ("Data3", c_uint16),
        ("Data4", c_uint8 * 8),
    ]

    @classmethod
    def from_uuid(cls, value: uuid.UUID) -> GUID:
        return cls.from_buffer_copy(value.bytes_le)


class NET_LUID(ctypes.Structure):
    """ifdef.h NET_LUID_LH (only ``Value`` is needed: the bitfields pack into it)."""

    _fields_ = [("Value", c_uint64)]

    @classmethod
    def of(cls, if_type: int, net_luid_index: int) -> NET_LUID:
        """Reserved:24 | NetLuidIndex:24 | IfType:16, low bits first."""
        return cls((if_type << 48) | (net_luid_index << 24))


class IN_ADDR(ctypes.Structure):
    _fields_ = [("s_addr", c_uint8 * 4)]


class IN6_ADDR(ctypes.Structure):
    _fields_ = [("Byte", c_uint8 * 16)]


class SOCKADDR_IN(ctypes.Structure):
    _fields_ = [
        ("sin_family", c_uint16),
        ("sin_port", c_uint16),
        ("sin_addr", IN_ADDR),
        ("sin_zero", c_uint8 * 8),
    ]


class SOCKADDR_IN6(ctypes.Structure):
    _fields_ = [
        ("sin6_family", c_uint16),
        ("sin6_port", c_uint16),
        ("sin6_flowinfo", c_uint32),
        ("sin6_addr", IN6_ADDR),
        ("sin6_scope_id", c_uint32),
    ]


class SOCKADDR_INET(ctypes.Union):
    _fields_ = [("Ipv4", SOCKADDR_IN), ("Ipv6", SOCKADDR_IN6), ("si_family", c_uint16)]

    @classmethod
    def of(cls, addr: IPAddress) -> SOCKADDR_INET:
        sa = cls()
        if isinstance(addr, ipaddress.IPv4Address):
            sa.Ipv4.sin_family = WIN_AF_INET
            sa.Ipv4.sin_addr.s_addr[:] = list(addr.packed)
        else:
            sa.Ipv6.sin6_family = WIN_AF_INET6
            sa.Ipv6.sin6_addr.Byte[:] = list(addr.packed)
        return sa
