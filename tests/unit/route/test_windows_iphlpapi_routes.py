"""Windows auto-route at the syscall boundary: every row handed to iphlpapi.dll.

MOCK NOTICE: there is no Windows here, so iphlpapi.dll is a recording fake (an object
with the DLL's export names, bound through the same prototype table as the real DLL).
It reads every ``MIB_IPFORWARD_ROW2`` / ``SOCKADDR_INET`` / ``MIB_IPINTERFACE_ROW`` with
its own offsets, written from ``netioapi.h``, ``ws2ipdef.h`` and ``ifdef.h`` (x64) -- not
with ztun's ctypes structures -- refuses a row the real call would reject or that ztun
must never send (ERROR_INVALID_PARAMETER), keeps a small route table, and answers
GetBestRoute2 / GetIpForwardEntry2 by filling rows the same independent way.  The
hosted Windows CI row runs the real calls.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from ztun.route import AutoRouteConfig, Journal
from ztun.route import windows as rw
from ztun.route.model import RouteError, SystemRoute
from ztun.tun import windows as tw

pytestmark = [
    pytest.mark.windows,
    pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="x64 layouts"),
]

WINTUN_LUID, ETH_LUID = 0x0035000007000000, 0x0006000001000000  # IfType 53 / 6, index 7 / 1
WINTUN_INDEX, ETH_INDEX = 17, 3
ALIASES = {WINTUN_LUID: "ztun0", ETH_LUID: "Ethernet"}
INDEX_OF = {WINTUN_LUID: WINTUN_INDEX, ETH_LUID: ETH_INDEX}
AF_INET, AF_INET6 = 2, 23  # ws2def.h (Windows numbers)
ERROR_INVALID_PARAMETER = 87
V4 = ipaddress.IPv4Interface("172.19.0.1/30")
V6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")


def u32(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 4], "little")


def read_sockaddr_inet(raw: bytes, at: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """SOCKADDR_INET (ws2ipdef.h), 28 bytes: si_family @0; SOCKADDR_IN: sin_port @2,
    sin_addr @4, sin_zero[8] @8; SOCKADDR_IN6: sin6_port @2, sin6_flowinfo @4,
    sin6_addr @8, sin6_scope_id @24."""
    family = int.from_bytes(raw[at : at + 2], "little")
    if raw[at + 2 : at + 4] != b"\0\0":
        raise ValueError("port must be 0")
    if family == AF_INET:
        if raw[at + 8 : at + 28] != bytes(20):
            raise ValueError("sin_zero and the rest of the union must be 0")
        return ipaddress.IPv4Address(raw[at + 4 : at + 8])
    if family == AF_INET6:
        if raw[at + 4 : at + 8] != bytes(4) or raw[at + 24 : at + 28] != bytes(4):
            raise ValueError("flowinfo and scope_id must be 0")
        return ipaddress.IPv6Address(raw[at + 8 : at + 24])
    raise ValueError(f"si_family {family}")


def write_sockaddr_inet(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if addr.version == 4:
        return AF_INET.to_bytes(2, "little") + bytes(2) + addr.packed + bytes(20)
    return AF_INET6.to_bytes(2, "little") + bytes(6) + addr.packed + bytes(4)


class Route:
    """One row of the fake table, read from MIB_IPFORWARD_ROW2 bytes (netioapi.h, x64):
    InterfaceLuid @0, InterfaceIndex @8, DestinationPrefix @12 (SOCKADDR_INET Prefix
    @12, UINT8 PrefixLength @40, 3 pad), NextHop @44, UINT8 SitePrefixLength @72,
    ValidLifetime @76, PreferredLifetime @80, Metric @84, NL_ROUTE_PROTOCOL Protocol @88,
    BOOLEAN Loopback @92, AutoconfigureAddress @93, Publish @94, Immortal @95, Age @96,
    NL_ROUTE_ORIGIN Origin @100; 104 bytes."""

    def __init__(self, raw: bytes) -> None:
        assert len(raw) == 104
        self.luid = int.from_bytes(raw[0:8], "little")
        self.index = u32(raw, 8)
        self.prefix = ipaddress.ip_network((read_sockaddr_inet(raw, 12), raw[40]))
        self.next_hop = read_sockaddr_inet(raw, 44)
        self.raw = raw

    @property
    def key(self) -> tuple[object, ...]:
        return (self.prefix, self.next_hop, self.index)

    def validate_for_create(self) -> None:
        raw = self.raw
        checks = {
            "the interface by index, LUID 0": self.luid == 0 and self.index in INDEX_OF.values(),
            "padding after PrefixLength": raw[41:44] == bytes(3),
            "SitePrefixLength 0, padding": raw[72:76] == bytes(4),
            "ValidLifetime infinite": u32(raw, 76) == 0xFFFFFFFF,
            "PreferredLifetime infinite": u32(raw, 80) == 0xFFFFFFFF,
            "Metric 0": u32(raw, 84) == 0,
            "Protocol MIB_IPPROTO_NETMGMT (3)": u32(raw, 88) == 3,
            "Loopback..Immortal FALSE": raw[92:96] == bytes(4),
            "Age 0, Origin NlroManual (0)": raw[96:104] == bytes(8),
            "next hop of the prefix's family": self.next_hop.version == self.prefix.version,
        }
        failed = [what for what, ok in checks.items() if not ok]
        if failed:
            raise AssertionError(f"row refused: {failed}: {raw.hex()}")


class FakeIpHlpApi:
    """iphlpapi.dll's route and interface calls over a small table (see module doc)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[object, ...], Route] = {}
        self.calls: list[tuple[str, Any]] = []
        self.interface_rows: list[bytes] = []
        self.best: dict[str, tuple[int, str, str]] = {  # prefix -> (luid, next hop, prefix)
            "0.0.0.0/0": (ETH_LUID, "192.168.1.1", "0.0.0.0/0"),
            "192.168.1.0/24": (ETH_LUID, "0.0.0.0", "192.168.1.0/24"),
            "127.0.0.0/8": (1, "0.0.0.0", "127.0.0.0/8"),
            "::/0": (ETH_LUID, "fe80::1", "::/0"),
        }

    # -- routes
    def CreateIpForwardEntry2(self, ref: Any) -> int:
        route = Route(bytes(ref._obj))
        self.calls.append(("create", route.raw))
        try:
            route.validate_for_create()
        except AssertionError:
            return ERROR_INVALID_PARAMETER
        if route.key in self.routes:
            return rw.ERROR_OBJECT_ALREADY_EXISTS
        self.routes[route.key] = route
        return 0

    def GetIpForwardEntry2(self, ref: Any) -> int:
        route = Route(bytes(ref._obj))  # in: prefix, next hop, interface
        self.calls.append(("get", route.raw))
        found = self.routes.get(route.key)
        if found is None:
            return rw.ERROR_NOT_FOUND
        ctypes.memmove(ctypes.addressof(ref._obj), found.raw, 104)
        return 0

    def DeleteIpForwardEntry2(self, ref: Any) -> int:
        route = Route(bytes(ref._obj))
        self.calls.append(("delete", route.raw))
        return 0 if self.routes.pop(route.key, None) else rw.ERROR_NOT_FOUND

    def GetBestRoute2(
        self, luid: Any, index: int, source: Any, dest: Any, options: int, row: Any, best: Any
    ) -> int:
        assert (luid, index, source, options) == (None, 0, None, 0), "any interface and source"
        addr = read_sockaddr_inet(bytes(dest._obj), 0)
        self.calls.append(("best", addr))
        matches = [ipaddress.ip_network(p) for p in self.best if addr in ipaddress.ip_network(p)]
        if not matches:
            return rw.ERROR_NETWORK_UNREACHABLE
        prefix = max(matches, key=lambda n: n.prefixlen)
        out_luid, next_hop, _ = self.best[str(prefix)]
        raw = bytearray(104)
        raw[0:8] = out_luid.to_bytes(8, "little")
        raw[8:12] = INDEX_OF.get(out_luid, 1).to_bytes(4, "little")
        raw[12:40] = write_sockaddr_inet(prefix.network_address)
        raw[40] = prefix.prefixlen
        raw[44:72] = write_sockaddr_inet(ipaddress.ip_address(next_hop))
        ctypes.memmove(ctypes.addressof(row._obj), bytes(raw), 104)
        return 0

    # -- interface names
    def ConvertInterfaceAliasToLuid(self, alias: str, luid_ref: Any) -> int:
        wanted = [luid for luid, name in ALIASES.items() if name == alias]
        if not wanted:
            return rw.ERROR_FILE_NOT_FOUND
        luid_ref._obj.Value = wanted[0]
        return 0

    def ConvertInterfaceLuidToAlias(self, luid_ref: Any, buf: Any, length: int) -> int:
        assert length == 257, "NDIS_IF_MAX_STRING_SIZE + 1 WCHARs"
        buf.value = ALIASES.get(luid_ref._obj.Value, "Loopback Pseudo-Interface 1")
        return 0

    def ConvertInterfaceLuidToIndex(self, luid_ref: Any, index_ref: Any) -> int:
        index_ref._obj.value = INDEX_OF[luid_ref._obj.Value]
        return 0

    # -- MIB_IPINTERFACE_ROW (tun side: the interface metric)
    def InitializeIpInterfaceEntry(self, ref: Any) -> None:
        ctypes.memset(ctypes.addressof(ref._obj), 0, 168)

    def GetIpInterfaceEntry(self, ref: Any) -> int:
        raw = bytearray(bytes(ref._obj))
        assert int.from_bytes(raw[8:16], "little") == WINTUN_LUID  # InterfaceLuid @8
        raw[44] = 1  # UseAutomaticMetric @44: on, as Windows starts
        raw[144:148] = (64).to_bytes(4, "little")  # SitePrefixLength @144
        raw[148:152] = (25).to_bytes(4, "little")  # Metric @148
        ctypes.memmove(ctypes.addressof(ref._obj), bytes(raw), 168)
        return 0

    def SetIpInterfaceEntry(self, ref: Any) -> int:
        self.interface_rows.append(bytes(ref._obj))
        return 0

    def CreateUnicastIpAddressEntry(self, ref: Any) -> int:
        return 0

    def InitializeUnicastIpAddressEntry(self, ref: Any) -> None:
        pass


def library(fake: FakeIpHlpApi, names: list[str]) -> Any:
    lib = type("FakeIphlpapi", (), {})()
    for name in names:
        fn = getattr(fake, name)
        wrapper = type("Fn", (), {"__call__": lambda self, *a, fn=fn: fn(*a)})()
        setattr(lib, name, wrapper)
    return lib


@pytest.fixture
def fake() -> FakeIpHlpApi:
    return FakeIpHlpApi()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "ztun0.journal")


def applier(fake: FakeIpHlpApi, journal: Journal) -> rw.WindowsRoutes:
    helper = rw.RouteHelper(library(fake, list(rw.ROUTE_PROTOTYPES)))
    interfaces = tw.IpHelper(library(fake, list(tw.IPHLPAPI_PROTOTYPES)))
    return rw.WindowsRoutes(journal, helper=helper, interfaces=interfaces)


def cfg(**kw: object) -> AutoRouteConfig:
    base: dict[str, object] = {"device": "ztun0", "tun_addresses": (V4,)}
    base.update(kw)
    return AutoRouteConfig(**base)  # type: ignore[arg-type]


def expected_row(prefix: str, index: int, next_hop: str | None) -> bytes:
    """A row as netioapi.h lays it out, written here field by field."""
    net = ipaddress.ip_network(prefix)
    hop = ipaddress.ip_address(next_hop or ("0.0.0.0" if net.version == 4 else "::"))
    return (
        bytes(8)  # InterfaceLuid @0: 0, the index names the interface
        + index.to_bytes(4, "little")  # InterfaceIndex @8
        + write_sockaddr_inet(net.network_address)  # DestinationPrefix.Prefix @12
        + bytes([net.prefixlen, 0, 0, 0])  # PrefixLength @40, padding
        + write_sockaddr_inet(hop)  # NextHop @44 (unspecified: on-link)
        + bytes(4)  # SitePrefixLength @72, padding
        + b"\xff" * 8  # ValidLifetime @76, PreferredLifetime @80: infinite
        + bytes(4)  # Metric @84
        + (3).to_bytes(4, "little")  # Protocol @88: MIB_IPPROTO_NETMGMT
        + bytes(4)  # Loopback, AutoconfigureAddress, Publish, Immortal @92..95
        + bytes(8)  # Age @96, Origin @100: NlroManual
    )


def test_prototypes_as_in_netioapi_h() -> None:
    row_p = ctypes.POINTER(rw.MIB_IPFORWARD_ROW2)
    sa_p, luid_p = ctypes.POINTER(rw.SOCKADDR_INET), ctypes.POINTER(rw.NET_LUID)
    dword = ctypes.c_uint32
    assert {
        "CreateIpForwardEntry2": (dword, [row_p]),
        "DeleteIpForwardEntry2": (dword, [row_p]),
        "GetIpForwardEntry2": (dword, [row_p]),
        "GetBestRoute2": (dword, [luid_p, dword, sa_p, sa_p, dword, row_p, sa_p]),
        "ConvertInterfaceAliasToLuid": (dword, [ctypes.c_wchar_p, luid_p]),
        "ConvertInterfaceLuidToAlias": (dword, [luid_p, ctypes.c_wchar_p, ctypes.c_size_t]),
        "ConvertInterfaceLuidToIndex": (dword, [luid_p, ctypes.POINTER(dword)]),
    } == rw.ROUTE_PROTOTYPES


def test_apply_hands_iphlpapi_exactly_these_rows(fake: FakeIpHlpApi, journal: Journal) -> None:
    count = applier(fake, journal).apply(
        cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),))
    )
    assert count == 3
    assert fake.calls[0] == ("best", ipaddress.ip_address("203.0.113.5"))
    assert [raw for op, raw in fake.calls if op == "create"] == [
        expected_row("203.0.113.5/32", ETH_INDEX, "192.168.1.1"),
        expected_row("0.0.0.0/1", WINTUN_INDEX, None),
        expected_row("128.0.0.0/1", WINTUN_INDEX, None),
    ]
    assert journal.read().intents[0] == SystemRoute(
        socket.AF_INET, "203.0.113.5/32", "Ethernet", ETH_INDEX, "192.168.1.1"
    )


def test_the_tunnel_interface_metric_is_fixed_at_zero(fake: FakeIpHlpApi, journal: Journal) -> None:
    """MIB_IPINTERFACE_ROW (netioapi.h, x64): Family @0, InterfaceLuid @8,
    UseAutomaticMetric @44, SitePrefixLength @144, Metric @148."""
    applier(fake, journal).apply(cfg(tun_addresses=(V4, V6)))
    families = []
    for raw in fake.interface_rows:
        families.append(int.from_bytes(raw[0:2], "little"))
        assert int.from_bytes(raw[8:16], "little") == WINTUN_LUID
        assert raw[44] == 0 and u32(raw, 148) == 0
        assert u32(raw, 144) == (0 if families[-1] == AF_INET else 64)  # IPv4: cleared
    assert families == [AF_INET, AF_INET6]


def test_ipv6_next_hop_and_includes(fake: FakeIpHlpApi, journal: Journal) -> None:
    plan = applier(fake, journal).plan(
        cfg(
            tun_addresses=(V4, V6),
            include=(ipaddress.ip_network("2001:db8::/32"),),
            exclude=(ipaddress.ip_network("2001:db8:1::/48"),),
        )
    )
    assert plan == [
        SystemRoute(socket.AF_INET6, "2001:db8:1::/48", "Ethernet", ETH_INDEX, "fe80::1"),
        SystemRoute(socket.AF_INET6, "2001:db8::/32", "ztun0", WINTUN_INDEX),
    ]


def test_restore_checks_then_deletes_newest_first(fake: FakeIpHlpApi, journal: Journal) -> None:
    routes = applier(fake, journal)
    routes.apply(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))
    fake.calls.clear()
    report = routes.restore()
    assert (report.removed, report.absent) == (3, 0) and not fake.routes
    assert [op for op, _ in fake.calls] == ["get", "delete"] * 3
    assert fake.calls[1][1] == expected_row("128.0.0.0/1", WINTUN_INDEX, None)
    assert not journal.exists()


def test_restore_after_the_adapter_is_gone_counts_its_routes_absent(
    fake: FakeIpHlpApi, journal: Journal
) -> None:
    routes = applier(fake, journal)
    routes.apply(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))
    for key in [k for k, r in fake.routes.items() if r.index == WINTUN_INDEX]:
        del fake.routes[key]  # closing the Wintun adapter removes its routes
    report = routes.restore()
    assert (report.removed, report.absent) == (1, 2) and not fake.routes


def test_a_refused_row_rolls_back_and_names_the_route(fake: FakeIpHlpApi, journal: Journal) -> None:
    real = fake.CreateIpForwardEntry2

    def refuse_second_half(ref: Any) -> int:
        if Route(bytes(ref._obj)).prefix == ipaddress.ip_network("128.0.0.0/1"):
            return ERROR_INVALID_PARAMETER
        return real(ref)

    fake.CreateIpForwardEntry2 = refuse_second_half  # type: ignore[method-assign]
    routes = rw.WindowsRoutes(
        journal,
        helper=rw.RouteHelper(library(fake, list(rw.ROUTE_PROTOTYPES))),
        interfaces=tw.IpHelper(library(fake, list(tw.IPHLPAPI_PROTOTYPES))),
    )
    with pytest.raises(RouteError, match=r"128\.0\.0\.0/1 .*Windows error 87"):
        routes.apply(cfg())
    assert not fake.routes and not journal.exists()


def test_recover_undoes_a_killed_run(fake: FakeIpHlpApi, journal: Journal) -> None:
    routes = applier(fake, journal)
    routes.apply(cfg())
    journal2 = Journal(journal.path)  # a new process finds the journal
    report = applier(fake, journal2).recover()
    assert report is not None and report.removed == 2 and not fake.routes


def test_unroutable_exclude_needs_nothing(fake: FakeIpHlpApi, journal: Journal) -> None:
    fake.best.clear()
    plan = applier(fake, journal).plan(cfg(proxy_addresses=(ipaddress.ip_address("203.0.113.5"),)))
    assert [r.dst for r in plan] == ["0.0.0.0/1", "128.0.0.0/1"]


def test_an_unknown_adapter_fails_before_any_change(fake: FakeIpHlpApi, journal: Journal) -> None:
    with pytest.raises(RouteError, match="ConvertInterfaceAliasToLuid 'nope': Windows error 2"):
        applier(fake, journal).apply(cfg(device="nope"))
    assert not [c for c in fake.calls if c[0] == "create"] and not journal.exists()
