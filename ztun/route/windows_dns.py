"""Windows ``--dns``: the Wintun interface's DNS servers, set through IP Helper and
journaled like the routes (the device's journal, after them).

MOCK NOTICE: iphlpapi.dll exists only on Windows. The structure is defined here and
tested byte for byte against ``netioapi.h``; the calls go through a function table bound
onto the DLL (or, in the tests, onto a recording fake with the same export names).

Layout (``netioapi.h``, Windows 10 2004 / SDK 10.0.19041, x64)::

    DNS_INTERFACE_SETTINGS  64  ULONG Version @0 (4 pad), ULONG64 Flags @8,
                                PWSTR Domain @16, NameServer @24, SearchList @32,
                                ULONG RegistrationEnabled @40, RegisterAdapterName @44,
                                EnableLLMNR @48, QueryAdapterName @52,
                                PWSTR ProfileNameServer @56

The calls::

    SetInterfaceDnsSettings(GUID Interface, const DNS_INTERFACE_SETTINGS *Settings)
    ConvertInterfaceLuidToGuid(const NET_LUID *InterfaceLuid, GUID *InterfaceGuid)

Only ``NameServer`` is written (``Flags`` = DNS_SETTING_NAMESERVER, plus
DNS_SETTING_IPV6 for the IPv6 list), a comma-separated list of the TUN's hairpin
peers. Windows asks the servers of the interface with the lowest metric first, which
auto-route makes the Wintun one; without ``--auto-route`` the physical interface's
servers may still be asked too.

What was there before: nothing. The interface is ztun's own Wintun adapter, which no
DHCP configures, so undoing a change writes an empty list (which clears it). The
adapter keeps its GUID from run to run (``ztun.tun.windows.adapter_guid``) and Windows
keeps the setting under that GUID, so a killed run's setting would come back with the
next adapter: the journal's key names the GUID, and restore clears it there. An
interface that is gone counts as already undone.
"""

from __future__ import annotations

import ctypes
import ipaddress
import uuid
from collections.abc import Callable, Sequence
from ctypes import POINTER, c_uint64
from typing import Any

from ztun.route.model import JournalChange, ResolverChange, RouteError
from ztun.win32 import (
    ERROR_FILE_NOT_FOUND,
    ERROR_NOT_FOUND,
    GUID,
    LPWSTR,
    NET_LUID,
    NETIO_STATUS,
    NO_ERROR,
    ULONG,
    Prototype,
    bind,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_INTERFACE_SETTINGS_VERSION1 = 1  # netioapi.h
DNS_SETTING_IPV6 = 0x0001
DNS_SETTING_NAMESERVER = 0x0002
_FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
_GONE = frozenset({ERROR_FILE_NOT_FOUND, ERROR_NOT_FOUND})


class DNS_INTERFACE_SETTINGS(ctypes.Structure):
    _fields_ = [
        ("Version", ULONG),
        ("Flags", c_uint64),
        ("Domain", LPWSTR),
        ("NameServer", LPWSTR),
        ("SearchList", LPWSTR),
        ("RegistrationEnabled", ULONG),
        ("RegisterAdapterName", ULONG),
        ("EnableLLMNR", ULONG),
        ("QueryAdapterName", ULONG),
        ("ProfileNameServer", LPWSTR),
    ]


def name_servers(version: int, servers: str) -> DNS_INTERFACE_SETTINGS:
    """The settings that set one family's list (``servers``: comma-separated; empty
    clears it) and nothing else."""
    settings = DNS_INTERFACE_SETTINGS()
    settings.Version = DNS_INTERFACE_SETTINGS_VERSION1
    settings.Flags = DNS_SETTING_NAMESERVER | (DNS_SETTING_IPV6 if version == 6 else 0)
    settings.NameServer = servers
    return settings


DNS_PROTOTYPES: dict[str, Prototype] = {
    "SetInterfaceDnsSettings": (NETIO_STATUS, [GUID, POINTER(DNS_INTERFACE_SETTINGS)]),
    "ConvertInterfaceLuidToGuid": (NETIO_STATUS, [POINTER(NET_LUID), POINTER(GUID)]),
}


def resolver_key(guid: uuid.UUID, version: int) -> str:
    """The journal's key of one family's list on one interface: ``{GUID}/IPv4``."""
    return f"{{{guid}}}/{_FAMILY_NAMES[version]}"


def parse_key(key: str) -> tuple[uuid.UUID, int]:
    guid, _, family = key.partition("/")
    versions = {name: version for version, name in _FAMILY_NAMES.items()}
    try:
        return uuid.UUID(guid), versions[family]
    except (ValueError, KeyError) as exc:
        raise RouteError(f"resolver {key}: not a Windows resolver key") from exc


class WindowsResolver:
    """Makes and unmakes :class:`ResolverChange` entries through IP Helper (a
    ``Changer``); binds its calls on first use, so an older Windows (before 10 2004,
    without SetInterfaceDnsSettings) still has auto-route.

    ``library`` is iphlpapi.dll (or a test's fake) and ``alias_to_luid`` names an
    interface's NET_LUID: both the routes' :class:`ztun.route.windows.RouteHelper`'s."""

    def __init__(self, library: Any, alias_to_luid: Callable[[str], NET_LUID]) -> None:
        self.library = library
        self.alias_to_luid = alias_to_luid
        self._fn: dict[str, Any] | None = None

    @property
    def fn(self) -> dict[str, Any]:
        if self._fn is None:
            try:
                self._fn = bind(self.library, DNS_PROTOTYPES)
            except OSError as exc:
                raise RouteError(f"--dns needs Windows 10 2004 or later: {exc}") from exc
        return self._fn

    def interface_guid(self, device: str) -> uuid.UUID:
        luid = self.alias_to_luid(device)
        guid = GUID()
        status = self.fn["ConvertInterfaceLuidToGuid"](ctypes.byref(luid), ctypes.byref(guid))
        if status != NO_ERROR:
            raise RouteError(f"ConvertInterfaceLuidToGuid {device!r}: Windows error {status}")
        return uuid.UUID(bytes_le=bytes(guid))

    def plan(self, device: str, servers: Sequence[IPAddress]) -> list[ResolverChange]:
        """One change per family of ``servers``, on ``device``'s interface."""
        if not servers:
            raise RouteError("--dns on Windows needs at least one resolver address")
        guid = self.interface_guid(device)
        return [
            ResolverChange(
                key=resolver_key(guid, version),
                servers=tuple(str(s) for s in servers if s.version == version),
            )
            for version in sorted({s.version for s in servers})
        ]

    def _set(self, change: ResolverChange, servers: str) -> int:
        guid, version = parse_key(change.key)
        settings = name_servers(version, servers)
        status: int = self.fn["SetInterfaceDnsSettings"](
            GUID.from_uuid(guid), ctypes.byref(settings)
        )
        return status

    def add(self, change: JournalChange) -> bool:
        assert isinstance(change, ResolverChange)
        status = self._set(change, ",".join(change.servers))
        if status != NO_ERROR:
            raise RouteError(f"SetInterfaceDnsSettings {change.describe()}: Windows error {status}")
        return True

    def remove(self, change: JournalChange) -> bool:
        assert isinstance(change, ResolverChange)
        status = self._set(change, "")
        if status in _GONE:
            return False  # the interface is gone
        if status != NO_ERROR:
            raise RouteError(f"undo {change.describe()}: Windows error {status}")
        return True
