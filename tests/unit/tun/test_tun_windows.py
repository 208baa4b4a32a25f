"""Windows Wintun, on Linux: prototypes, layouts and ring logic without a DLL.

No Windows here, so these tests mock what cannot run: wintun.dll, iphlpapi.dll and
kernel32.dll are fake objects exposing the same export names (the function tables are
built from them exactly as from the real DLLs), and the fake Wintun hands out packets
from ctypes buffers so the device's copies in and out of "ring memory" are real.
Checked exactly: every prototype against ``api/wintun.h`` / netioapi.h / synchapi.h
(and that ctypes accepts them on real function pointers), the structures against the
x64 layouts wireguard-windows' winipcfg tests pin (MIB_UNICASTIPADDRESS_ROW 80 bytes,
MIB_IPINTERFACE_ROW 168), every byte of the rows handed to the IP Helper API, ring
capacity and packet size limits, and the readiness protocol a Windows pump relies on.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import sys
import threading
import uuid
from collections import deque
from ctypes import POINTER, c_int, c_uint32, c_uint64, c_void_p, c_wchar_p
from typing import Any

import pytest

from tests.unit.tun.ctypes_fakes import fake_library
from ztun.route.windows import ERROR_OBJECT_ALREADY_EXISTS, NET_LUID, WIN_AF_INET, WIN_AF_INET6
from ztun.tun import Device, DeviceError
from ztun.tun import windows as w
from ztun.tun.windows import (
    IP_DAD_STATE_PREFERRED,
    MIB_IPINTERFACE_ROW,
    MIB_UNICASTIPADDRESS_ROW,
    WintunDevice,
)

pytestmark = pytest.mark.windows

X64 = pytest.mark.skipif(ctypes.sizeof(c_void_p) != 8, reason="x64 layouts")

V4 = ipaddress.IPv4Interface("172.19.0.1/30")
V6 = ipaddress.IPv6Interface("fdfe:dcba:9876::1/126")
LUID = NET_LUID.of(53, 7)  # IF_TYPE_PROP_VIRTUAL, NetLuidIndex 7
IFINDEX = 17


# -- fakes: objects with the DLLs' export names -------------------------------------------


class FakeWintun:
    ADAPTER = 0xADA0
    SESSION = 0x5E50
    READ_EVENT = 0xE0

    def __init__(self) -> None:
        self.error = 0
        self.calls: list[tuple[Any, ...]] = []
        self.rx: deque[bytes] = deque()
        self.rx_error = w.ERROR_NO_MORE_ITEMS
        self.held: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.released: list[int] = []
        self.allocated = 0
        self.sent: list[bytes] = []
        self.ring_full = False
        self.create_fails = False
        self.session_fails = False
        self.logger: Any = None
        self.driver_version = 0x0000000E  # 0.14: (major << 16) | minor, as example.c reads it

    def last_error(self) -> int:
        return self.error

    def WintunCreateAdapter(self, name: str, tunnel_type: str, guid_ref: Any) -> int | None:
        self.calls.append(("create", name, tunnel_type, bytes(guid_ref._obj)))
        if self.create_fails:
            self.error = 5  # ERROR_ACCESS_DENIED
            return None
        return self.ADAPTER

    def WintunOpenAdapter(self, name: str) -> int:
        return self.ADAPTER

    def WintunCloseAdapter(self, adapter: int) -> None:
        self.calls.append(("close_adapter", adapter))

    def WintunGetAdapterLUID(self, adapter: int, luid_ref: Any) -> None:
        luid_ref._obj.Value = LUID.Value

    def WintunGetRunningDriverVersion(self) -> int:
        return self.driver_version

    def WintunSetLogger(self, callback: Any) -> None:
        self.logger = callback

    def WintunStartSession(self, adapter: int, capacity: int) -> int | None:
        self.calls.append(("start", adapter, capacity))
        if self.session_fails:
            self.error = 87  # ERROR_INVALID_PARAMETER
            return None
        return self.SESSION

    def WintunEndSession(self, session: int) -> None:
        self.calls.append(("end", session))

    def WintunGetReadWaitEvent(self, session: int) -> int:
        return self.READ_EVENT

    def WintunReceivePacket(self, session: int, size_p: Any) -> int | None:
        assert session == self.SESSION
        if not self.rx:
            self.error = self.rx_error
            return None
        packet = self.rx.popleft()
        buf = ctypes.create_string_buffer(packet, len(packet))
        self.held[ctypes.addressof(buf)] = buf
        size_p.contents.value = len(packet)
        return ctypes.addressof(buf)

    def WintunReleaseReceivePacket(self, session: int, ptr: int) -> None:
        self.released.append(ptr)
        del self.held[ptr]

    def WintunAllocateSendPacket(self, session: int, size: int) -> int | None:
        if self.ring_full:
            self.error = w.ERROR_BUFFER_OVERFLOW
            return None
        self.allocated += 1
        buf = ctypes.create_string_buffer(b"\xa5" * size, size)
        self.held[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def WintunSendPacket(self, session: int, ptr: int) -> None:
        self.sent.append(self.held.pop(ptr).raw)


class FakeIpHelper:
    def __init__(self) -> None:
        self.created: list[bytes] = []
        self.set_rows: list[bytes] = []
        self.create_status = 0
        self.missing_families: set[int] = set()

    def InitializeUnicastIpAddressEntry(self, ref: Any) -> None:
        ref._obj.OnLinkPrefixLength = 0xFF  # what Windows does: "invalid" until set

    def CreateUnicastIpAddressEntry(self, ref: Any) -> int:
        self.created.append(bytes(ref._obj))
        return self.create_status

    def InitializeIpInterfaceEntry(self, ref: Any) -> None:
        ref._obj.SitePrefixLength = 0xFFFFFFFF

    def GetIpInterfaceEntry(self, ref: Any) -> int:
        row = ref._obj
        assert row.InterfaceLuid.Value == LUID.Value
        if row.Family in self.missing_families:
            return w.ERROR_NOT_FOUND
        row.InterfaceIndex, row.NlMtu, row.SitePrefixLength = IFINDEX, 1500, 64
        return 0

    def SetIpInterfaceEntry(self, ref: Any) -> int:
        self.set_rows.append(bytes(ref._obj))
        return 0

    def ConvertInterfaceLuidToIndex(self, luid_ref: Any, index_ref: Any) -> int:
        assert luid_ref._obj.Value == LUID.Value
        index_ref._obj.value = IFINDEX
        return 0


class FakeKernel32:
    def __init__(self) -> None:
        self.next_handle = 0x100
        self.signaled: list[int] = []
        self.closed: list[int] = []
        self.waits: list[tuple[int, list[int], bool, int]] = []

    def CreateEventW(self, attrs: Any, manual: bool, initial: bool, name: Any) -> int:
        assert (attrs, manual, initial, name) == (None, False, False, None)  # auto-reset
        self.next_handle += 4
        return self.next_handle

    def SetEvent(self, handle: int) -> int:
        self.signaled.append(handle)
        return 1

    def CloseHandle(self, handle: int) -> int:
        self.closed.append(handle)
        return 1

    def WaitForMultipleObjects(self, count: int, handles: Any, wait_all: bool, ms: int) -> int:
        listed = [handles[i] for i in range(count)]
        self.waits.append((count, listed, wait_all, ms))
        for i, handle in enumerate(listed):
            if handle in self.signaled:
                self.signaled.remove(handle)  # auto-reset
                return w.WAIT_OBJECT_0 + i
        assert ms != w.INFINITE, "the pump would block forever"
        return w.WAIT_TIMEOUT


class Fakes:
    def __init__(self) -> None:
        self.wintun = FakeWintun()
        self.iphlp = FakeIpHelper()
        self.k32 = FakeKernel32()
        self.api = w.WintunApi(
            fake_library(self.wintun, list(w.WINTUN_PROTOTYPES)), last_error=self.wintun.last_error
        )
        self.helper = w.IpHelper(fake_library(self.iphlp, list(w.IPHLPAPI_PROTOTYPES)))
        self.kernel32 = w.Kernel32(fake_library(self.k32, list(w.KERNEL32_PROTOTYPES)))

    def open(self, name: str = "ztun0", **kwargs: Any) -> WintunDevice:
        kwargs.setdefault("addresses", [V4, V6])
        return w.open_wintun(
            name, api=self.api, iphlp=self.helper, kernel32=self.kernel32, **kwargs
        )


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def dev(fakes: Fakes) -> WintunDevice:
    return fakes.open(mtu=1400)


# -- prototypes ---------------------------------------------------------------------------

DWORD = c_uint32  # spelled independently of the module: 32 bits on Windows
WINTUN_H: dict[str, tuple[Any, list[Any]]] = {
    "WintunCreateAdapter": (c_void_p, [c_wchar_p, c_wchar_p, POINTER(w.GUID)]),
    "WintunOpenAdapter": (c_void_p, [c_wchar_p]),
    "WintunCloseAdapter": (None, [c_void_p]),
    "WintunGetAdapterLUID": (None, [c_void_p, POINTER(NET_LUID)]),
    "WintunGetRunningDriverVersion": (DWORD, []),
    "WintunSetLogger": (None, [w.WINTUN_LOGGER_CALLBACK]),
    "WintunStartSession": (c_void_p, [c_void_p, DWORD]),
    "WintunEndSession": (None, [c_void_p]),
    "WintunGetReadWaitEvent": (c_void_p, [c_void_p]),
    "WintunReceivePacket": (c_void_p, [c_void_p, POINTER(DWORD)]),
    "WintunReleaseReceivePacket": (None, [c_void_p, c_void_p]),
    "WintunAllocateSendPacket": (c_void_p, [c_void_p, DWORD]),
    "WintunSendPacket": (None, [c_void_p, c_void_p]),
}


def test_wintun_prototypes_as_in_wintun_h(fakes: Fakes) -> None:
    assert ctypes.sizeof(w.DWORD) == 4
    for name, (restype, argtypes) in WINTUN_H.items():
        fn = fakes.api.fn[name]
        assert (fn.restype, list(fn.argtypes)) == (restype, argtypes), name
    assert set(fakes.api.fn) == set(WINTUN_H)


def test_logger_callback_type_and_forwarding(
    fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    """VOID CALLBACK(WINTUN_LOGGER_LEVEL, DWORD64 Timestamp, LPCWSTR Message)."""
    cb = w.WINTUN_LOGGER_CALLBACK
    assert cb._restype_ is None and cb._argtypes_ == (c_int, c_uint64, c_wchar_p)
    with caplog.at_level(logging.DEBUG, logger="ztun"):
        fakes.wintun.logger(w.WINTUN_LOG_ERR, 133_000_000_000_000_000, "adapter vanished")
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "wintun: adapter vanished"


def test_iphlpapi_and_kernel32_prototypes(fakes: Fakes) -> None:
    urow, irow = POINTER(MIB_UNICASTIPADDRESS_ROW), POINTER(MIB_IPINTERFACE_ROW)
    expected = {
        "InitializeUnicastIpAddressEntry": (None, [urow]),
        "CreateUnicastIpAddressEntry": (DWORD, [urow]),
        "InitializeIpInterfaceEntry": (None, [irow]),
        "GetIpInterfaceEntry": (DWORD, [irow]),
        "SetIpInterfaceEntry": (DWORD, [irow]),
        "ConvertInterfaceLuidToIndex": (DWORD, [POINTER(NET_LUID), POINTER(c_uint32)]),
        "CreateEventW": (c_void_p, [c_void_p, c_int, c_int, c_wchar_p]),
        "SetEvent": (c_int, [c_void_p]),
        "CloseHandle": (c_int, [c_void_p]),
        "WaitForMultipleObjects": (DWORD, [DWORD, POINTER(c_void_p), c_int, DWORD]),
    }
    table = {**fakes.helper.fn, **fakes.kernel32.fn}
    assert set(table) == set(expected)
    for name, (restype, argtypes) in expected.items():
        assert (table[name].restype, list(table[name].argtypes)) == (restype, argtypes), name


def test_ctypes_accepts_every_prototype_on_real_function_pointers() -> None:
    """Bind each table onto fresh function pointers into libc (never called): ctypes
    validates restype and every argtype's from_param as it would for the real DLLs."""
    libc = ctypes.CDLL(None)

    class RealPointers:
        def __getattr__(self, name: str) -> Any:
            return libc._FuncPtr(("abs", libc))

    for table in (w.WINTUN_PROTOTYPES, w.IPHLPAPI_PROTOTYPES, w.KERNEL32_PROTOTYPES):
        bound = w.bind(RealPointers(), table)
        for name, (restype, argtypes) in table.items():
            assert bound[name].restype == restype
            assert list(bound[name].argtypes) == argtypes


def test_missing_export_fails_at_load_with_its_name() -> None:
    lib = fake_library(FakeWintun(), [n for n in w.WINTUN_PROTOTYPES if n != "WintunSendPacket"])
    with pytest.raises(DeviceError, match="WintunSendPacket is missing"):
        w.WintunApi(lib)


@pytest.mark.skipif(sys.platform == "win32", reason="this is Windows: the DLLs load")
def test_dlls_are_loaded_only_on_windows() -> None:
    for dll in ("wintun.dll", "iphlpapi.dll", "kernel32.dll"):
        with pytest.raises(DeviceError, match="only on Windows"):
            w.windll(dll)
    with pytest.raises(DeviceError, match="only on Windows"):
        w.IpHelper.load()


# -- layouts ------------------------------------------------------------------------------


def _offsets(struct_type: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(struct_type, name).offset for name, *_ in struct_type._fields_}


@X64
def test_unicast_row_layout() -> None:
    assert ctypes.sizeof(MIB_UNICASTIPADDRESS_ROW) == 80
    assert _offsets(MIB_UNICASTIPADDRESS_ROW) == {
        "Address": 0,
        "InterfaceLuid": 32,
        "InterfaceIndex": 40,
        "PrefixOrigin": 44,
        "SuffixOrigin": 48,
        "ValidLifetime": 52,
        "PreferredLifetime": 56,
        "OnLinkPrefixLength": 60,
        "SkipAsSource": 61,
        "DadState": 64,
        "ScopeId": 68,
        "CreationTimeStamp": 72,
    }


@X64
def test_ip_interface_row_layout() -> None:
    offsets = _offsets(MIB_IPINTERFACE_ROW)
    assert ctypes.sizeof(MIB_IPINTERFACE_ROW) == 168
    assert {k: offsets[k] for k in ("InterfaceLuid", "InterfaceIndex", "InterfaceIdentifier")} == {
        "InterfaceLuid": 8,
        "InterfaceIndex": 16,
        "InterfaceIdentifier": 24,
    }
    assert (offsets["AdvertisingEnabled"], offsets["AdvertiseDefaultRoute"]) == (40, 48)
    assert (offsets["RouterDiscoveryBehavior"], offsets["LinkLocalAddressTimeout"]) == (52, 76)
    assert (offsets["ZoneIndices"], offsets["SitePrefixLength"]) == (80, 144)
    assert (offsets["Metric"], offsets["NlMtu"], offsets["Connected"]) == (148, 152, 156)
    assert (offsets["SupportsRouterDiscovery"], offsets["ReachableTime"]) == (159, 160)
    assert (offsets["TransmitOffload"], offsets["ReceiveOffload"]) == (164, 165)
    assert offsets["DisableDefaultRoutes"] == 166


def test_guid_is_the_uuid_in_windows_byte_order() -> None:
    value = uuid.UUID("01020304-0506-0708-090a-0b0c0d0e0f10")
    guid = w.GUID.from_uuid(value)
    assert ctypes.sizeof(w.GUID) == 16
    assert bytes(guid) == bytes.fromhex("0403020106050807090a0b0c0d0e0f10")
    assert (guid.Data1, guid.Data2, guid.Data3) == (0x01020304, 0x0506, 0x0708)
    assert w.adapter_guid("ztun0") == w.adapter_guid("ztun0") != w.adapter_guid("ztun1")


@X64
def test_unicast_row_bytes_ipv4() -> None:
    row = w.fill_unicast_row(MIB_UNICASTIPADDRESS_ROW(), LUID, V4)
    assert bytes(row) == (
        bytes.fromhex("0200" + "0000" + "ac130001")  # SOCKADDR_IN: AF_INET, port, 172.19.0.1
        + bytes(8)  # sin_zero
        + bytes(12)  # the rest of the SOCKADDR_INET union (28)
        + bytes(4)  # alignment of NET_LUID
        + bytes.fromhex("0000000700003500")  # NET_LUID: NetLuidIndex 7 (bits 24..47), IfType 53
        + bytes(4)  # InterfaceIndex: the LUID names the interface
        + (1).to_bytes(4, "little") * 2  # IpPrefixOriginManual, IpSuffixOriginManual
        + b"\xff" * 8  # Valid/PreferredLifetime infinite
        + bytes([30, 0, 0, 0])  # OnLinkPrefixLength /30, SkipAsSource, pad
        + IP_DAD_STATE_PREFERRED.to_bytes(4, "little")
        + bytes(4 + 8)  # ScopeId, CreationTimeStamp
    )


@X64
def test_unicast_row_bytes_ipv6() -> None:
    raw = bytes(w.fill_unicast_row(MIB_UNICASTIPADDRESS_ROW(), LUID, V6))
    assert raw[:28] == (
        bytes.fromhex("1700000000000000")  # AF_INET6 (23), port, flowinfo
        + ipaddress.IPv6Address("fdfe:dcba:9876::1").packed
        + bytes(4)  # scope id
    )
    assert raw[60] == 126


def test_set_row_mtu_clears_ipv4_site_prefix_length_only() -> None:
    for family, site in ((WIN_AF_INET, 0), (WIN_AF_INET6, 64)):
        row = MIB_IPINTERFACE_ROW(Family=family, SitePrefixLength=64, NlMtu=1500)
        raw = bytes(w.set_row_mtu(row, 1400))
        assert int.from_bytes(raw[152:156], "little") == 1400
        assert int.from_bytes(raw[144:148], "little") == site


# -- limits -------------------------------------------------------------------------------


def test_wintun_h_limits() -> None:
    assert (w.WINTUN_MIN_RING_CAPACITY, w.WINTUN_MAX_RING_CAPACITY) == (0x20000, 0x4000000)
    assert w.WINTUN_MAX_IP_PACKET_SIZE == 0xFFFF and w.MAX_ADAPTER_NAME == 128
    assert w.check_capacity(w.DEFAULT_RING_CAPACITY) == 0x400000


@pytest.mark.parametrize("capacity", [0x20000, 0x40000, 0x800000, 0x4000000])
def test_capacity_accepted(capacity: int) -> None:
    assert w.check_capacity(capacity) == capacity


@pytest.mark.parametrize("capacity", [0, -1, 0x10000, 0x1FFFF, 0x30000, 0x4000001, 0x8000000])
def test_capacity_rejected(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two from 0x20000 to 0x4000000"):
        w.check_capacity(capacity)


@pytest.mark.parametrize(
    ("size", "footprint"), [(1, 8), (4, 8), (5, 12), (1500, 1504), (1501, 1508), (0xFFFF, 0x10004)]
)
def test_ring_footprint(size: int, footprint: int) -> None:
    """TUN_ALIGN(sizeof(TUN_PACKET) + size); 0x10004 is session.c's TUN_MAX_PACKET_SIZE."""
    assert w.ring_footprint(size) == footprint


# -- opening and configuring --------------------------------------------------------------


def test_open_creates_adapter_session_and_configures(fakes: Fakes) -> None:
    dev = fakes.open(mtu=1400)
    assert isinstance(dev, Device)
    guid = uuid.uuid5(w.ADAPTER_GUID_NAMESPACE, "ztun0").bytes_le
    assert fakes.wintun.calls == [
        ("create", "ztun0", "ztun", guid),
        ("start", FakeWintun.ADAPTER, w.DEFAULT_RING_CAPACITY),
    ]
    assert (dev.name, dev.index, dev.mtu, dev.frame_header_len) == ("ztun0", IFINDEX, 1400, 0)
    assert dev.luid.Value == LUID.Value and dev.read_event == FakeWintun.READ_EVENT
    assert fakes.iphlp.created == [
        bytes(w.fill_unicast_row(MIB_UNICASTIPADDRESS_ROW(OnLinkPrefixLength=0xFF), LUID, a))
        for a in (V4, V6)
    ]
    v4_row, v6_row = (MIB_IPINTERFACE_ROW.from_buffer_copy(r) for r in fakes.iphlp.set_rows)
    assert (v4_row.Family, v4_row.NlMtu, v4_row.SitePrefixLength) == (WIN_AF_INET, 1400, 0)
    assert (v6_row.Family, v6_row.NlMtu, v6_row.SitePrefixLength) == (WIN_AF_INET6, 1400, 64)


def test_open_skips_a_missing_ipv6_interface(fakes: Fakes) -> None:
    fakes.iphlp.missing_families = {WIN_AF_INET6}
    fakes.open(mtu=1400, addresses=[V4])
    assert len(fakes.iphlp.set_rows) == 1


def test_small_mtu_leaves_ipv6_alone(fakes: Fakes) -> None:
    fakes.open(mtu=1000, addresses=[V4])
    assert [MIB_IPINTERFACE_ROW.from_buffer_copy(r).Family for r in fakes.iphlp.set_rows] == [
        WIN_AF_INET
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "adapter name"),
        ({"name": "x" * 128}, "adapter name"),
        ({"mtu": 0x10000}, "mtu"),
        ({"capacity": 0x30000}, "power of two"),
    ],
)
def test_bad_arguments_fail_before_any_call(
    fakes: Fakes, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fakes.open(**kwargs)
    assert fakes.wintun.calls == []


def test_create_failure_says_why(fakes: Fakes) -> None:
    fakes.wintun.create_fails = True
    with pytest.raises(DeviceError, match=r"Windows error 5 .*Administrator"):
        fakes.open()


def test_session_failure_closes_the_adapter(fakes: Fakes) -> None:
    fakes.wintun.session_fails = True
    with pytest.raises(DeviceError, match="WintunStartSession: Windows error 87"):
        fakes.open()
    assert fakes.wintun.calls[-1] == ("close_adapter", FakeWintun.ADAPTER)


def test_configure_failure_closes_everything(fakes: Fakes) -> None:
    fakes.iphlp.create_status = 87
    with pytest.raises(DeviceError, match=r"CreateUnicastIpAddressEntry 172\.19\.0\.1/30"):
        fakes.open()
    assert fakes.wintun.calls[-2:] == [
        ("end", FakeWintun.SESSION),
        ("close_adapter", FakeWintun.ADAPTER),
    ]
    assert len(fakes.k32.closed) == 1


def test_existing_address_is_not_an_error(fakes: Fakes) -> None:
    fakes.iphlp.create_status = ERROR_OBJECT_ALREADY_EXISTS
    fakes.open()


def test_close_is_idempotent(fakes: Fakes, dev: WintunDevice) -> None:
    dev.close()
    dev.close()
    assert [c[0] for c in fakes.wintun.calls].count("end") == 1
    assert [c[0] for c in fakes.wintun.calls].count("close_adapter") == 1
    assert len(fakes.k32.closed) == 1


# -- packets through the ring -------------------------------------------------------------


def test_read_copies_and_releases(fakes: Fakes, dev: WintunDevice) -> None:
    packet = bytes(range(60))
    fakes.wintun.rx.append(packet)
    buf = memoryview(bytearray(b"\xa5" * 2048))
    n = dev.read_into(buf)
    assert n == 60 and buf[:n] == packet and buf[n] == 0xA5
    assert len(fakes.wintun.released) == 1 and not fakes.wintun.held
    with pytest.raises(BlockingIOError):
        dev.read_into(buf)


def test_read_truncates_into_a_short_buffer_and_still_releases(
    fakes: Fakes, dev: WintunDevice
) -> None:
    fakes.wintun.rx.append(b"\x45" * 100)
    buf = memoryview(bytearray(40))
    assert dev.read_into(buf) == 40
    assert dev.errors["rx_truncated"] == 1 and not fakes.wintun.held


def test_read_on_a_terminating_adapter(fakes: Fakes, dev: WintunDevice) -> None:
    fakes.wintun.rx_error = w.ERROR_HANDLE_EOF
    with pytest.raises(DeviceError, match="terminating") as info:
        dev.read_into(memoryview(bytearray(64)))
    assert info.value.errno == errno.EPIPE


@pytest.mark.parametrize(
    "packet",
    [b"\x45" + bytes(19), bytearray(b"\x60" + bytes(39)), memoryview(b"xx\x45" + bytes(27))[2:]],
)
def test_write_copies_into_the_ring(
    fakes: Fakes, dev: WintunDevice, packet: bytes | bytearray | memoryview
) -> None:
    assert dev.write(packet) == len(packet)
    assert fakes.wintun.sent == [bytes(packet)] and not fakes.wintun.held
    assert dev.write_frame(packet) == len(packet)


def test_write_size_limits(fakes: Fakes, dev: WintunDevice) -> None:
    assert dev.write(bytes(w.WINTUN_MAX_IP_PACKET_SIZE)) == 0xFFFF
    for size in (0, w.WINTUN_MAX_IP_PACKET_SIZE + 1):
        with pytest.raises(DeviceError) as info:
            dev.write(bytes(size))
        assert info.value.errno == errno.EMSGSIZE
    assert fakes.wintun.allocated == 1 and dev.errors["tx_size"] == 2


def test_write_to_a_full_ring_would_block(fakes: Fakes, dev: WintunDevice) -> None:
    fakes.wintun.ring_full = True
    with pytest.raises(BlockingIOError):
        dev.write(b"\x45" + bytes(19))


# -- readiness: what a Windows pump waits on ----------------------------------------------


def test_no_file_descriptor(dev: WintunDevice) -> None:
    with pytest.raises(DeviceError, match="wait_readable") as info:
        dev.fileno()
    assert info.value.errno == errno.EOPNOTSUPP


def test_wait_only_after_the_ring_was_found_empty(fakes: Fakes, dev: WintunDevice) -> None:
    assert dev.wait_readable() is True and fakes.k32.waits == []  # not yet known empty
    with pytest.raises(BlockingIOError):
        dev.read_into(memoryview(bytearray(64)))
    assert dev.wait_readable(timeout=0.25) is False
    wake_event = fakes.k32.waits[0][1][1]
    assert fakes.k32.waits == [(2, [FakeWintun.READ_EVENT, wake_event], False, 250)]
    fakes.k32.signaled.append(FakeWintun.READ_EVENT)  # the driver moved the tail
    assert dev.wait_readable() is True
    assert fakes.k32.waits[-1][3] == w.INFINITE


def test_wake_interrupts_a_wait(fakes: Fakes, dev: WintunDevice) -> None:
    with pytest.raises(BlockingIOError):
        dev.read_into(memoryview(bytearray(64)))
    dev.wake()
    assert dev.wait_readable() is True


def test_pump_shaped_loop_never_waits_with_packets_in_the_ring(
    fakes: Fakes, dev: WintunDevice
) -> None:
    """pump.py's loop with poll() replaced by wait_readable(): a batch smaller than the
    backlog must not leave packets behind an auto-reset event that will not fire again."""
    batch, got = 2, []
    fakes.wintun.rx.extend(bytes([0x45, i]) for i in range(5))
    buf = memoryview(bytearray(64))
    for _ in range(10):  # bounded
        if not dev.wait_readable(timeout=0):
            break
        for _ in range(batch):
            try:
                n = dev.read_into(buf)
            except BlockingIOError:
                break
            got.append(bytes(buf[:n]))
    assert got == [bytes([0x45, i]) for i in range(5)]
    assert len(fakes.k32.waits) == 1  # only once the ring was empty


class BlockingKernel32(FakeKernel32):
    """WaitForMultipleObjects that really blocks until SetEvent (or the timeout), as the
    reader thread meets it: a condition stands in for the kernel's wait."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def SetEvent(self, handle: int) -> int:
        with self.cond:
            self.signaled.append(handle)
            self.cond.notify_all()
        return 1

    def WaitForMultipleObjects(self, count: int, handles: Any, wait_all: bool, ms: int) -> int:
        listed = [handles[i] for i in range(count)]
        with self.cond:
            ready = self.cond.wait_for(
                lambda: any(h in self.signaled for h in listed), timeout=ms / 1000
            )
            if not ready:
                return w.WAIT_TIMEOUT
            index = next(i for i, h in enumerate(listed) if h in self.signaled)
            self.signaled.remove(listed[index])  # auto-reset
            return w.WAIT_OBJECT_0 + index


def test_wake_releases_a_reader_thread_blocked_in_the_wait() -> None:
    """The engine's reader thread blocks in wait_readable(slice); a stop wakes it at once
    through the private event, not at the end of the slice."""
    fakes = Fakes()
    fakes.k32 = BlockingKernel32()
    fakes.kernel32 = w.Kernel32(fake_library(fakes.k32, list(w.KERNEL32_PROTOTYPES)))
    dev = fakes.open()
    with pytest.raises(BlockingIOError):
        dev.read_into(memoryview(bytearray(64)))  # the ring is known empty: waits block
    result: list[bool] = []
    entered = threading.Event()
    real_wait = fakes.k32.WaitForMultipleObjects

    def wait_and_note(*args: Any) -> int:
        entered.set()
        return real_wait(*args)

    fakes.kernel32.fn["WaitForMultipleObjects"].impl = wait_and_note
    reader = threading.Thread(target=lambda: result.append(dev.wait_readable(30.0)))
    reader.start()
    assert entered.wait(10)
    dev.wake()
    reader.join(10)
    assert not reader.is_alive() and result == [True]
