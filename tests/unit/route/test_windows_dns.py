"""Windows ``--dns`` at the syscall boundary: every DNS_INTERFACE_SETTINGS handed to
iphlpapi.dll, journaled and restored with the routes.

MOCK NOTICE: there is no Windows here, so iphlpapi.dll is the recording fake of
test_windows_iphlpapi_routes (routes, interface names) plus SetInterfaceDnsSettings and
ConvertInterfaceLuidToGuid, bound through the same prototype tables as the real DLL.
It reads each DNS_INTERFACE_SETTINGS from its raw bytes with offsets written here from
``netioapi.h`` (x64) -- not with ztun's ctypes structure -- and follows its PWSTR
members to the strings they point at; it keeps each interface's server lists and
refuses what the real call would (ERROR_INVALID_PARAMETER) or what ztun must never
send. The hosted Windows CI row runs the real calls.
"""

from __future__ import annotations

import ctypes
import ipaddress
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.unit.route.test_windows_iphlpapi_routes import (
    ERROR_INVALID_PARAMETER,
    V4,
    V6,
    WINTUN_LUID,
    FakeIpHlpApi,
    library,
)
from ztun.route import AutoRouteConfig, Journal
from ztun.route import windows as rw
from ztun.route import windows_dns as wd
from ztun.route.model import ResolverChange, RouteError
from ztun.tun import windows as tw

pytestmark = [
    pytest.mark.windows,
    pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="x64 layouts"),
]

WINTUN_GUID = uuid.UUID("6f1c2a9e-3b4d-5e6f-8a9b-0c1d2e3f4a5b")
GUIDS = {WINTUN_LUID: WINTUN_GUID}
PEER4, PEER6 = ipaddress.ip_address("172.19.0.2"), ipaddress.ip_address("fdfe:dcba:9876::2")
SETTINGS_SIZE = 64


def u32(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 4], "little")


def wide(raw: bytes, at: int) -> str | None:
    """The string a PWSTR member points at (None: a NULL pointer)."""
    pointer = int.from_bytes(raw[at : at + 8], "little")
    return ctypes.wstring_at(pointer) if pointer else None


class Settings:
    """A DNS_INTERFACE_SETTINGS read from its bytes (netioapi.h, x64): ULONG Version @0,
    4 bytes padding @4, ULONG64 Flags @8, PWSTR Domain @16, PWSTR NameServer @24, PWSTR
    SearchList @32, ULONG RegistrationEnabled @40, ULONG RegisterAdapterName @44, ULONG
    EnableLLMNR @48, ULONG QueryAdapterName @52, PWSTR ProfileNameServer @56; 64 bytes.
    DNS_SETTING_IPV6 = 0x1, DNS_SETTING_NAMESERVER = 0x2, VERSION1 = 1."""

    def __init__(self, raw: bytes) -> None:
        assert len(raw) == SETTINGS_SIZE
        self.raw = raw
        self.version = u32(raw, 0)
        self.flags = int.from_bytes(raw[8:16], "little")
        self.name_server = wide(raw, 24)
        self.others = {
            "padding @4": raw[4:8] != bytes(4),
            "Domain @16": wide(raw, 16) is not None,
            "SearchList @32": wide(raw, 32) is not None,
            "RegistrationEnabled..QueryAdapterName @40..55": raw[40:56] != bytes(16),
            "ProfileNameServer @56": wide(raw, 56) is not None,
        }

    def refused(self) -> list[str]:
        why = [what for what, set_ in self.others.items() if set_]
        if self.version != 1:
            why.append(f"Version {self.version}")
        if self.flags not in (0x2, 0x3):
            why.append(f"Flags {self.flags:#x}: only NAMESERVER (and IPV6) may be set")
        if self.name_server is None:
            why.append("NameServer NULL with DNS_SETTING_NAMESERVER")
        return why


class FakeDnsIpHlpApi(FakeIpHlpApi):
    """The route fake plus the interfaces' DNS server lists, by GUID and family."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[tuple[uuid.UUID, str], str] = {}
        # Read during the call: the strings the pointers name are freed after it.
        self.dns_calls: list[tuple[uuid.UUID, Settings]] = []
        self.refuse_dns = False  # refuse a list (clearing one still works)

    def ConvertInterfaceLuidToGuid(self, luid_ref: Any, guid_ref: Any) -> int:
        guid = GUIDS.get(luid_ref._obj.Value)
        if guid is None:
            return rw.ERROR_FILE_NOT_FOUND
        ctypes.memmove(ctypes.addressof(guid_ref._obj), guid.bytes_le, 16)
        return 0

    def SetInterfaceDnsSettings(self, guid: Any, ref: Any) -> int:
        # GUID by value (guiddef.h: Data1..3 little-endian, Data4 bytes = bytes_le).
        interface = uuid.UUID(bytes_le=bytes(guid))
        settings = Settings(ctypes.string_at(ctypes.addressof(ref._obj), SETTINGS_SIZE))
        self.dns_calls.append((interface, settings))
        if settings.refused() or (self.refuse_dns and settings.name_server):
            return ERROR_INVALID_PARAMETER
        if interface not in GUIDS.values():
            return rw.ERROR_FILE_NOT_FOUND
        family = "IPv6" if settings.flags & 0x1 else "IPv4"
        assert settings.name_server is not None
        self.servers[(interface, family)] = settings.name_server
        return 0


NAMES = [*rw.ROUTE_PROTOTYPES, *wd.DNS_PROTOTYPES, *tw.IPHLPAPI_PROTOTYPES]


@pytest.fixture
def fake() -> FakeDnsIpHlpApi:
    return FakeDnsIpHlpApi()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "ztun0.journal")


def appliers(fake: FakeDnsIpHlpApi, journal: Journal) -> tuple[rw.WindowsRoutes, rw.WindowsDns]:
    lib = library(fake, NAMES)
    helper = rw.RouteHelper(lib)
    routes = rw.WindowsRoutes(journal, helper=helper, interfaces=tw.IpHelper(lib))
    return routes, rw.WindowsDns(journal, "ztun0", helper=helper)


def expected_settings(name_server_flags: int) -> bytes:
    """A DNS_INTERFACE_SETTINGS as netioapi.h lays it out, written field by field, but
    for the NameServer pointer @24 (an address: the fake follows it)."""
    return (
        (1).to_bytes(4, "little")  # Version @0: DNS_INTERFACE_SETTINGS_VERSION1
        + bytes(4)  # padding @4 (Flags is 8-aligned)
        + name_server_flags.to_bytes(8, "little")  # Flags @8
        + bytes(8)  # Domain @16: NULL
        + b"\x01" * 8  # NameServer @24: set (compared apart)
        + bytes(8)  # SearchList @32: NULL
        + bytes(16)  # RegistrationEnabled @40 .. QueryAdapterName @52: 0
        + bytes(8)  # ProfileNameServer @56: NULL
    )


def masked(raw: bytes) -> bytes:
    return raw[:24] + b"\x01" * 8 + raw[32:]


def test_the_structure_is_netioapi_hs() -> None:
    s = wd.DNS_INTERFACE_SETTINGS
    assert ctypes.sizeof(s) == SETTINGS_SIZE
    offsets = {name: getattr(s, name).offset for name, _ in s._fields_}
    assert offsets == {
        "Version": 0, "Flags": 8, "Domain": 16, "NameServer": 24, "SearchList": 32,
        "RegistrationEnabled": 40, "RegisterAdapterName": 44, "EnableLLMNR": 48,
        "QueryAdapterName": 52, "ProfileNameServer": 56,
    }  # fmt: skip
    assert (wd.DNS_SETTING_IPV6, wd.DNS_SETTING_NAMESERVER) == (0x1, 0x2)
    restype, argtypes = wd.DNS_PROTOTYPES["SetInterfaceDnsSettings"]
    assert restype is ctypes.c_uint32 and argtypes[0] is tw.GUID  # GUID by value


def test_apply_hands_iphlpapi_exactly_these_settings(
    fake: FakeDnsIpHlpApi, journal: Journal
) -> None:
    _, dns = appliers(fake, journal)
    dns.apply([PEER4, PEER6])
    assert [(guid, masked(settings.raw)) for guid, settings in fake.dns_calls] == [
        (WINTUN_GUID, expected_settings(0x2)),  # NAMESERVER: the IPv4 list
        (WINTUN_GUID, expected_settings(0x3)),  # NAMESERVER | IPV6
    ]
    assert fake.servers == {
        (WINTUN_GUID, "IPv4"): "172.19.0.2",
        (WINTUN_GUID, "IPv6"): "fdfe:dcba:9876::2",
    }
    intents = journal.read().intents
    assert [intents[i] for i in sorted(intents)] == [
        ResolverChange(key=f"{{{WINTUN_GUID}}}/IPv4", servers=("172.19.0.2",)),
        ResolverChange(key=f"{{{WINTUN_GUID}}}/IPv6", servers=("fdfe:dcba:9876::2",)),
    ]


def test_restore_clears_the_lists_and_leaves_the_routes_journal(
    fake: FakeDnsIpHlpApi, journal: Journal
) -> None:
    routes, dns = appliers(fake, journal)
    routes.apply(AutoRouteConfig(device="ztun0", tun_addresses=(V4, V6)))
    dns.apply([PEER4, PEER6])
    dns.restore()
    # Newest first: the IPv6 list, then the IPv4 one, each cleared (an empty list).
    assert [(s.flags, s.name_server) for _, s in fake.dns_calls[2:]] == [
        (0x3, ""),
        (0x2, ""),
    ]
    assert fake.servers == {(WINTUN_GUID, "IPv4"): "", (WINTUN_GUID, "IPv6"): ""}
    assert journal.exists() and fake.routes  # the routes' restore comes next
    dns.restore()  # idempotent: the same clearing again, no error
    routes.restore()
    assert not journal.exists() and not fake.routes


def test_a_killed_runs_resolver_is_cleared_by_the_routes_recover(
    fake: FakeDnsIpHlpApi, journal: Journal
) -> None:
    routes, dns = appliers(fake, journal)
    routes.apply(AutoRouteConfig(device="ztun0", tun_addresses=(V4,)))
    dns.apply([PEER4])
    fresh_routes, _ = appliers(fake, Journal(journal.path))  # the next start
    report = fresh_routes.recover()
    assert report is not None and report.removed == 3  # two routes, one resolver list
    assert fake.servers == {(WINTUN_GUID, "IPv4"): ""} and not journal.exists()


def test_an_interface_that_is_gone_counts_as_undone(
    fake: FakeDnsIpHlpApi, journal: Journal
) -> None:
    _, dns = appliers(fake, journal)
    dns.apply([PEER4])
    GUIDS.pop(WINTUN_LUID)
    try:
        report = rw.restore_changes(journal, dns.changer)
    finally:
        GUIDS[WINTUN_LUID] = WINTUN_GUID
    assert (report.removed, report.absent) == (0, 1) and not journal.exists()


def test_a_refused_setting_rolls_back_and_says_so(fake: FakeDnsIpHlpApi, journal: Journal) -> None:
    _, dns = appliers(fake, journal)
    fake.refuse_dns = True
    with pytest.raises(RouteError, match=r"SetInterfaceDnsSettings resolver .* Windows error 87"):
        dns.apply([PEER4])
    # Rolled back: the list cleared again (what the journal's entry undoes), no journal.
    assert fake.servers == {(WINTUN_GUID, "IPv4"): ""} and not journal.exists()


def test_an_unknown_adapter_fails_before_any_change(
    fake: FakeDnsIpHlpApi, journal: Journal
) -> None:
    with pytest.raises(RouteError, match="ConvertInterfaceAliasToLuid 'nope'"):
        rw.WindowsDns(journal, "nope", helper=rw.RouteHelper(library(fake, NAMES))).apply([PEER4])
    assert fake.dns_calls == [] and not journal.exists()


def test_a_windows_without_the_call_says_which_version_it_needs(journal: Journal) -> None:
    fake = FakeDnsIpHlpApi()
    lib = library(fake, [*rw.ROUTE_PROTOTYPES])  # before Windows 10 2004
    with pytest.raises(RouteError, match="--dns needs Windows 10 2004 or later"):
        rw.WindowsDns(journal, "ztun0", helper=rw.RouteHelper(lib)).apply([PEER4])
