"""Windows auto-route as ``MIB_IPFORWARD_ROW2`` rows and the IP Helper calls (ctypes).

MOCK NOTICE: the structures are defined and tested here byte-for-byte against
``netioapi.h`` / ``ws2ipdef.h`` / ``ifdef.h``; the calls (``CreateIpForwardEntry2``,
``DeleteIpForwardEntry2``, ``InitializeIpForwardEntry`` in iphlpapi.dll) are loaded only on
Windows and cannot run here.

Layouts (x64; MSVC natural alignment, which ctypes reproduces)::

    NET_LUID            8   union { ULONG64 Value; {Reserved:24, NetLuidIndex:24, IfType:16} }
    SOCKADDR_IN        16   USHORT family; USHORT port (network order); IN_ADDR; CHAR zero[8]
    SOCKADDR_IN6       28   family; port; ULONG flowinfo; IN6_ADDR; ULONG scope_id
    SOCKADDR_INET      28   union of the two (and USHORT si_family)
    IP_ADDRESS_PREFIX  32   SOCKADDR_INET Prefix; UINT8 PrefixLength; (3 pad)
    MIB_IPFORWARD_ROW2 104  InterfaceLuid@0 InterfaceIndex@8 DestinationPrefix@12
                            NextHop@44 SitePrefixLength@72 ValidLifetime@76
                            PreferredLifetime@80 Metric@84 Protocol@88 Loopback@92
                            AutoconfigureAddress@93 Publish@94 Immortal@95 Age@96 Origin@100

Auto-route on Windows mirrors macOS: 0.0.0.0/1 + 128.0.0.0/1 (and ::/1 + 8000::/1) on the
wintun interface, and a host route for the proxy via the original gateway.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import sys
from collections.abc import Callable
from ctypes import c_int, c_uint8, c_uint16, c_uint32, c_uint64
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

WIN_AF_INET = 2
WIN_AF_INET6 = 23
INFINITE_LIFETIME = 0xFFFFFFFF
MIB_IPPROTO_NETMGMT = 3  # NL_ROUTE_PROTOCOL: a static route added by management
NLRO_MANUAL = 0  # NL_ROUTE_ORIGIN
NO_ERROR = 0
ERROR_NOT_FOUND = 1168
ERROR_OBJECT_ALREADY_EXISTS = 5010


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


class IP_ADDRESS_PREFIX(ctypes.Structure):
    _fields_ = [("Prefix", SOCKADDR_INET), ("PrefixLength", c_uint8)]


class MIB_IPFORWARD_ROW2(ctypes.Structure):
    _fields_ = [
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", c_uint32),  # NET_IFINDEX
        ("DestinationPrefix", IP_ADDRESS_PREFIX),
        ("NextHop", SOCKADDR_INET),
        ("SitePrefixLength", c_uint8),
        ("ValidLifetime", c_uint32),
        ("PreferredLifetime", c_uint32),
        ("Metric", c_uint32),
        ("Protocol", c_int),  # NL_ROUTE_PROTOCOL (enum)
        ("Loopback", c_uint8),  # BOOLEAN
        ("AutoconfigureAddress", c_uint8),
        ("Publish", c_uint8),
        ("Immortal", c_uint8),
        ("Age", c_uint32),
        ("Origin", c_int),  # NL_ROUTE_ORIGIN (enum)
    ]


def make_row(
    dst: IPNetwork,
    *,
    interface_luid: NET_LUID,
    interface_index: int,
    next_hop: IPAddress | None = None,
    metric: int = 0,
) -> MIB_IPFORWARD_ROW2:
    """A fully specified row: ``dst`` via ``next_hop`` (None: on-link, the unspecified
    address of the family) on the interface, a static (NETMGMT) route that never expires."""
    row = MIB_IPFORWARD_ROW2()
    row.InterfaceLuid = interface_luid
    row.InterfaceIndex = interface_index
    row.DestinationPrefix.Prefix = SOCKADDR_INET.of(dst.network_address)
    row.DestinationPrefix.PrefixLength = dst.prefixlen
    unspecified = ipaddress.ip_address(0 if dst.version == 4 else "::")
    row.NextHop = SOCKADDR_INET.of(next_hop if next_hop is not None else unspecified)
    row.ValidLifetime = INFINITE_LIFETIME
    row.PreferredLifetime = INFINITE_LIFETIME
    row.Metric = metric
    row.Protocol = MIB_IPPROTO_NETMGMT
    row.Origin = NLRO_MANUAL
    return row


def plan_windows_routes(
    luid: NET_LUID, ifindex: int, families: tuple[int, ...], *, metric: int = 0
) -> list[MIB_IPFORWARD_ROW2]:
    """Half-default rows into the TUN for each family (``socket.AF_INET``/``AF_INET6``)."""
    halves: dict[int, tuple[str, str]] = {
        socket.AF_INET: ("0.0.0.0/1", "128.0.0.0/1"),
        socket.AF_INET6: ("::/1", "8000::/1"),
    }
    return [
        make_row(
            ipaddress.ip_network(n), interface_luid=luid, interface_index=ifindex, metric=metric
        )
        for fam in families
        for n in halves[fam]
    ]


class IpHelper:  # pragma: no cover - Windows only
    """The three iphlpapi.dll calls auto-route needs; constructing it off Windows fails."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError("iphlpapi.dll is only available on Windows")
        dll: Any = ctypes.WinDLL("iphlpapi.dll")  # type: ignore[attr-defined,unused-ignore]
        row_p = ctypes.POINTER(MIB_IPFORWARD_ROW2)
        self._create: Callable[[Any], int] = dll.CreateIpForwardEntry2
        self._delete: Callable[[Any], int] = dll.DeleteIpForwardEntry2
        self._init: Callable[[Any], None] = dll.InitializeIpForwardEntry
        for fn in (dll.CreateIpForwardEntry2, dll.DeleteIpForwardEntry2):
            fn.argtypes, fn.restype = [row_p], c_uint32
        dll.InitializeIpForwardEntry.argtypes, dll.InitializeIpForwardEntry.restype = [row_p], None

    def add(self, row: MIB_IPFORWARD_ROW2) -> bool:
        """Add a route; False if it already existed (not ours to remove later)."""
        status = self._create(ctypes.byref(row))
        if status == ERROR_OBJECT_ALREADY_EXISTS:
            return False
        if status != NO_ERROR:
            raise OSError(status, "CreateIpForwardEntry2 failed")
        return True

    def delete(self, row: MIB_IPFORWARD_ROW2) -> bool:
        """Delete a route; False if it was already gone (idempotent restore)."""
        status = self._delete(ctypes.byref(row))
        if status == ERROR_NOT_FOUND:
            return False
        if status != NO_ERROR:
            raise OSError(status, "DeleteIpForwardEntry2 failed")
        return True
