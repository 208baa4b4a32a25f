"""Windows auto-route through IP Helper: ``MIB_IPFORWARD_ROW2`` rows and the calls on them.

MOCK NOTICE: iphlpapi.dll exists only on Windows.  The structures are defined and tested
here byte for byte against ``netioapi.h`` / ``ws2ipdef.h`` / ``ifdef.h``, and the calls
go through a function table (:class:`RouteHelper`) bound onto the DLL -- or, in the
tests, onto a recording fake with the same export names that checks every row's bytes;
the hosted Windows CI row runs them for real.

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

The calls (``netioapi.h``), each returning a Win32 error code (NETIO_STATUS)::

    CreateIpForwardEntry2(const MIB_IPFORWARD_ROW2 *Row)     ERROR_OBJECT_ALREADY_EXISTS
    DeleteIpForwardEntry2(const MIB_IPFORWARD_ROW2 *Row)     ERROR_NOT_FOUND
    GetIpForwardEntry2(MIB_IPFORWARD_ROW2 *Row)              in: prefix, next hop, interface
    GetBestRoute2(NET_LUID *InterfaceLuid, NET_IFINDEX InterfaceIndex,
                  const SOCKADDR_INET *Source, const SOCKADDR_INET *Destination,
                  ULONG AddressSortOptions, MIB_IPFORWARD_ROW2 *BestRoute,
                  SOCKADDR_INET *BestSourceAddress)
    ConvertInterfaceAliasToLuid(const WCHAR *Alias, NET_LUID *Luid)
    ConvertInterfaceLuidToAlias(const NET_LUID *Luid, WCHAR *Alias, SIZE_T Length)
    ConvertInterfaceLuidToIndex(const NET_LUID *Luid, NET_IFINDEX *Index)

Auto-route on Windows has the shape of macOS's (:mod:`ztun.route.system`): the halves of
each carried family (or the includes) on-link on the Wintun interface, and each exclude
or proxy address a tunnel route would capture kept on the route that carries it now
(GetBestRoute2 before any change).  Rows name the interface by index only (the LUID
left 0: either may name it, netioapi.h), which is what the journal keeps.  Routes made
by CreateIpForwardEntry2 are not persistent (that is ``route -p``'s registry store): a
reboot drops them.  The Wintun interface's metric is set to 0 (automatic metric off,
as wireguard-windows does for a default-route tunnel) so its routes also win ties; that
setting belongs to ztun's adapter, which goes away with ztun, so it is not journaled.

``--dns`` (:class:`WindowsDns`) journals its resolver changes (made by
:class:`ztun.route.windows_dns.WindowsResolver`) in the device's journal, after the
routes, and makes them through the same :class:`WindowsChanger`, so a route restore
undoes them too.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
from collections.abc import Sequence
from ctypes import POINTER, c_int, c_uint8, c_uint32
from typing import TYPE_CHECKING, Any

from ztun.route.journaled import append_changes, recover_changes, restore_changes
from ztun.route.model import (
    JournalChange,
    ResolverChange,
    RestoreReport,
    RouteError,
    SystemRoute,
)
from ztun.route.system import CurrentRoute, plan_system_routes
from ztun.route.windows_dns import WindowsResolver
from ztun.tun.windows import IpHelper
from ztun.win32 import (
    ERROR_FILE_NOT_FOUND,
    ERROR_HOST_UNREACHABLE,
    ERROR_NETWORK_UNREACHABLE,
    ERROR_NOT_FOUND,
    ERROR_OBJECT_ALREADY_EXISTS,
    INFINITE_LIFETIME,
    LPCWSTR,
    LPWSTR,
    NET_IFINDEX,
    NET_LUID,
    NETIO_STATUS,
    NO_ERROR,
    SIZE_T,
    SOCKADDR_INET,
    ULONG,
    WIN_AF_INET,
    WIN_AF_INET6,
    Prototype,
    bind,
)

if TYPE_CHECKING:
    from ztun.route.journal import Journal
    from ztun.route.plan import AutoRouteConfig

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIB_IPPROTO_NETMGMT = 3  # NL_ROUTE_PROTOCOL: a static route added by management
NLRO_MANUAL = 0  # NL_ROUTE_ORIGIN
# ERROR_FILE_NOT_FOUND: the interface named by the row does not exist (any more)
_GONE = frozenset({ERROR_NOT_FOUND, ERROR_FILE_NOT_FOUND})
_NO_ROUTE = frozenset({ERROR_NOT_FOUND, ERROR_NETWORK_UNREACHABLE, ERROR_HOST_UNREACHABLE})
NDIS_IF_MAX_STRING_SIZE = 256  # ifdef.h: an alias, in WCHARs, without the terminator


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


def sockaddr_address(sa: SOCKADDR_INET) -> IPAddress | None:
    """The address in a SOCKADDR_INET (None for another family)."""
    if sa.si_family == WIN_AF_INET:
        return ipaddress.IPv4Address(bytes(sa.Ipv4.sin_addr.s_addr))
    if sa.si_family == WIN_AF_INET6:
        return ipaddress.IPv6Address(bytes(sa.Ipv6.sin6_addr.Byte))
    return None


def row_of(change: SystemRoute) -> MIB_IPFORWARD_ROW2:
    """The row of a journaled route: the interface by index, the LUID left 0."""
    gateway = ipaddress.ip_address(change.gateway) if change.gateway is not None else None
    return make_row(
        ipaddress.ip_network(change.dst),
        interface_luid=NET_LUID(0),
        interface_index=change.ifindex,
        next_hop=gateway,
        metric=change.metric or 0,
    )


ROW_P = POINTER(MIB_IPFORWARD_ROW2)

ROUTE_PROTOTYPES: dict[str, Prototype] = {
    "CreateIpForwardEntry2": (NETIO_STATUS, [ROW_P]),
    "DeleteIpForwardEntry2": (NETIO_STATUS, [ROW_P]),
    "GetIpForwardEntry2": (NETIO_STATUS, [ROW_P]),
    "GetBestRoute2": (
        NETIO_STATUS,
        [
            POINTER(NET_LUID),
            NET_IFINDEX,
            POINTER(SOCKADDR_INET),
            POINTER(SOCKADDR_INET),
            ULONG,
            ROW_P,
            POINTER(SOCKADDR_INET),
        ],
    ),
    "ConvertInterfaceAliasToLuid": (NETIO_STATUS, [LPCWSTR, POINTER(NET_LUID)]),
    "ConvertInterfaceLuidToAlias": (NETIO_STATUS, [POINTER(NET_LUID), LPWSTR, SIZE_T]),
    "ConvertInterfaceLuidToIndex": (NETIO_STATUS, [POINTER(NET_LUID), POINTER(NET_IFINDEX)]),
}


class RouteHelper:
    """The iphlpapi.dll calls auto-route makes (function table: the DLL or a test fake)."""

    def __init__(self, library: Any) -> None:
        self.library = library  # the resolver binds its calls here too (windows_dns)
        self.fn = bind(library, ROUTE_PROTOTYPES)

    @classmethod
    def load(cls) -> RouteHelper:  # pragma: no cover - Windows only
        from ztun.win32 import windll

        return cls(windll("iphlpapi.dll"))

    def _check(self, status: int, what: str) -> None:
        if status != NO_ERROR:
            raise RouteError(f"{what}: Windows error {status}")

    def alias_to_luid(self, alias: str) -> NET_LUID:
        luid = NET_LUID()
        status = self.fn["ConvertInterfaceAliasToLuid"](alias, ctypes.byref(luid))
        self._check(status, f"ConvertInterfaceAliasToLuid {alias!r}")
        return luid

    def luid_to_alias(self, luid: NET_LUID) -> str:
        buf = ctypes.create_unicode_buffer(NDIS_IF_MAX_STRING_SIZE + 1)
        status = self.fn["ConvertInterfaceLuidToAlias"](ctypes.byref(luid), buf, len(buf))
        self._check(status, "ConvertInterfaceLuidToAlias")
        return buf.value

    def luid_to_index(self, luid: NET_LUID) -> int:
        index = NET_IFINDEX()
        status = self.fn["ConvertInterfaceLuidToIndex"](ctypes.byref(luid), ctypes.byref(index))
        self._check(status, "ConvertInterfaceLuidToIndex")
        return int(index.value)

    def best_route(self, addr: IPAddress) -> CurrentRoute | None:
        """GetBestRoute2 for ``addr`` from any interface and source (None: unroutable)."""
        row, source = MIB_IPFORWARD_ROW2(), SOCKADDR_INET()
        dest = SOCKADDR_INET.of(addr)
        status = self.fn["GetBestRoute2"](
            None, 0, None, ctypes.byref(dest), 0, ctypes.byref(row), ctypes.byref(source)
        )
        if status in _NO_ROUTE:
            return None
        self._check(status, f"GetBestRoute2 {addr}")
        next_hop = sockaddr_address(row.NextHop)
        return CurrentRoute(
            prefixlen=row.DestinationPrefix.PrefixLength,
            device=self.luid_to_alias(row.InterfaceLuid),
            ifindex=row.InterfaceIndex,
            gateway=next_hop if next_hop is not None and not next_hop.is_unspecified else None,
        )

    def add(self, row: MIB_IPFORWARD_ROW2) -> bool:
        """Add a route; False if it already existed (not ours to remove later)."""
        status = self.fn["CreateIpForwardEntry2"](ctypes.byref(row))
        if status == ERROR_OBJECT_ALREADY_EXISTS:
            return False
        self._check(status, "CreateIpForwardEntry2")
        return True

    def exists(self, row: MIB_IPFORWARD_ROW2) -> bool:
        """Whether the table holds the row's route (matched on prefix, next hop and
        interface; GetIpForwardEntry2 fills in the rest of a copy)."""
        probe = MIB_IPFORWARD_ROW2.from_buffer_copy(bytes(row))
        status = self.fn["GetIpForwardEntry2"](ctypes.byref(probe))
        if status in _GONE:
            return False
        self._check(status, "GetIpForwardEntry2")
        return True

    def delete(self, row: MIB_IPFORWARD_ROW2) -> bool:
        """Delete a route; False if it was already gone (idempotent restore)."""
        status = self.fn["DeleteIpForwardEntry2"](ctypes.byref(row))
        if status in _GONE:
            return False
        self._check(status, "DeleteIpForwardEntry2")
        return True


class WindowsChanger:
    """Makes and unmakes journaled changes through IP Helper: routes, and the resolver
    entries of ``--dns`` (:mod:`ztun.route.windows_dns`), so a route restore undoes
    those too."""

    def __init__(self, helper: RouteHelper) -> None:
        self.helper = helper
        self.resolver = WindowsResolver(helper.library, helper.alias_to_luid)

    @staticmethod
    def _row(change: JournalChange) -> MIB_IPFORWARD_ROW2:
        if not isinstance(change, SystemRoute):
            raise RouteError(f"{change.describe()}: not a Windows change (another OS's journal)")
        return row_of(change)

    def add(self, change: JournalChange) -> bool:
        if isinstance(change, ResolverChange):
            return self.resolver.add(change)
        try:
            return self.helper.add(self._row(change))
        except RouteError as exc:
            raise RouteError(f"{change.describe()}: {exc}") from exc

    def remove(self, change: JournalChange) -> bool:
        if isinstance(change, ResolverChange):
            return self.resolver.remove(change)
        row = self._row(change)
        try:
            if not self.helper.exists(row):
                return False  # gone (the adapter's routes die with it)
            return self.helper.delete(row)
        except RouteError as exc:
            raise RouteError(f"undo {change.describe()}: {exc}") from exc


TUNNEL_INTERFACE_METRIC = 0


class WindowsRoutes:
    """The Windows auto-route applier (`Platform.routes`): plan with GetBestRoute2,
    journal, apply; restore from the journal."""

    def __init__(
        self,
        journal: Journal,
        *,
        helper: RouteHelper | None = None,
        interfaces: IpHelper | None = None,
    ) -> None:
        self.journal = journal
        self.helper = helper if helper is not None else RouteHelper.load()
        self._interfaces = interfaces
        self.changer = WindowsChanger(self.helper)

    @property
    def interfaces(self) -> IpHelper:
        if self._interfaces is None:  # pragma: no cover - Windows only
            self._interfaces = IpHelper.load()
        return self._interfaces

    def plan(self, cfg: AutoRouteConfig) -> list[SystemRoute]:
        luid = self.helper.alias_to_luid(cfg.device)
        return plan_system_routes(cfg, self.helper.luid_to_index(luid), self.helper.best_route)

    def apply(self, cfg: AutoRouteConfig) -> int:
        changes: Sequence[SystemRoute] = self.plan(cfg)
        luid = self.helper.alias_to_luid(cfg.device)
        for family in sorted(cfg.proxied_families):
            win_family = WIN_AF_INET if family == socket.AF_INET else WIN_AF_INET6
            self.interfaces.set_metric(luid, win_family, TUNNEL_INTERFACE_METRIC)
        append_changes(changes, self.journal, cfg.device, self.changer)
        for change in changes:
            log.info("auto-route: %s", change.describe())
        return len(changes)

    def restore(self) -> RestoreReport:
        return restore_changes(self.journal, self.changer)

    def recover(self) -> RestoreReport | None:
        return recover_changes(self.journal, self.changer)


class WindowsDns:
    """The Windows ``--dns`` applier (`Platform.dns`): the Wintun interface's servers
    set to ``servers`` (:mod:`ztun.route.windows_dns`), journaled in the device's journal
    after its routes.

    It makes its changes through a whole :class:`WindowsChanger`, not the resolver
    alone: a failed apply rolls back everything the journal lists, the routes included."""

    def __init__(self, journal: Journal, device: str, *, helper: RouteHelper | None = None) -> None:
        self.journal = journal
        self.device = device
        self.changer = WindowsChanger(helper if helper is not None else RouteHelper.load())

    def apply(self, servers: Sequence[IPAddress]) -> None:
        plan = self.changer.resolver.plan(self.device, servers)
        append_changes(plan, self.journal, self.device, self.changer)

    def restore(self) -> None:
        """Undo the journal's resolver entries (idempotent); the routes' restore, which
        runs next, removes the file."""
        if self.journal.exists():
            restore_changes(self.journal, self.changer, only=ResolverChange)
