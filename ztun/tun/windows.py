"""Windows TUN: a Wintun adapter and its ring session, driven through wintun.dll (ctypes).

MOCK NOTICE: wintun.dll, iphlpapi.dll and kernel32.dll are loaded only on Windows
(:meth:`WintunApi.load`, :meth:`IpHelper.load`, :meth:`Kernel32.load`); here the function
tables are built from fake objects exposing the same names, so the prototypes
(``argtypes``/``restype``, as declared in WireGuard's ``api/wintun.h`` 0.14, netioapi.h
and synchapi.h), the structures (byte layouts vs netioapi.h, x64) and the device logic
(ring reads/writes, capacity and size limits, readiness) are tested without a DLL.

The Wintun API (``api/wintun.h``)::

    WINTUN_ADAPTER_HANDLE WintunCreateAdapter(LPCWSTR Name, LPCWSTR TunnelType,
                                              const GUID *RequestedGUID)   NULL + GetLastError
    WINTUN_ADAPTER_HANDLE WintunOpenAdapter(LPCWSTR Name)
    VOID  WintunCloseAdapter(WINTUN_ADAPTER_HANDLE)       removes an adapter we created
    VOID  WintunGetAdapterLUID(WINTUN_ADAPTER_HANDLE, NET_LUID *)
    WINTUN_SESSION_HANDLE WintunStartSession(WINTUN_ADAPTER_HANDLE, DWORD Capacity)
    VOID  WintunEndSession(WINTUN_SESSION_HANDLE)
    HANDLE WintunGetReadWaitEvent(WINTUN_SESSION_HANDLE)  owned by the session: never close
    BYTE *WintunReceivePacket(WINTUN_SESSION_HANDLE, DWORD *PacketSize)
    VOID  WintunReleaseReceivePacket(WINTUN_SESSION_HANDLE, const BYTE *)
    BYTE *WintunAllocateSendPacket(WINTUN_SESSION_HANDLE, DWORD PacketSize)
    VOID  WintunSendPacket(WINTUN_SESSION_HANDLE, const BYTE *)

Capacity is a power of two in [WINTUN_MIN_RING_CAPACITY 0x20000, WINTUN_MAX_RING_CAPACITY
0x4000000]; a packet is 1..WINTUN_MAX_IP_PACKET_SIZE (0xFFFF) bytes and takes
``TUN_ALIGN(4 + size)`` bytes of ring (``api/session.c``).

Readiness -- there is no descriptor.  The engine's pump (``ztun/pump.py``) polls
``fileno()``; a Wintun session offers an auto-reset event instead, and the documented
protocol is: receive until ``ERROR_NO_MORE_ITEMS``, *then* wait for the event.  So this
device raises on ``fileno()`` and offers :meth:`WintunDevice.wait_readable` (returns at
once while the ring may still hold packets, else ``WaitForMultipleObjects`` on the read
event and a private wake event) and :meth:`WintunDevice.wake` (what ``TunPump.stop``
writes to its wake pipe for).  A Windows pump is ``pump.py``'s loop with
``poller.poll()`` replaced by ``device.wait_readable()`` and the wake-pipe write by
``device.wake()``; ``read_into`` raises ``BlockingIOError`` exactly when the ring is empty
and ``write`` raises it when the ring is full, as the pump expects.  Wintun's calls are
thread-safe, so the engine loop's writes need no lock against the pump thread.

Addresses and MTU go through the IP Helper API (not ``netsh``): ``CreateUnicastIpAddressEntry``
with a ``MIB_UNICASTIPADDRESS_ROW`` per address, and ``GetIpInterfaceEntry`` /
``SetIpInterfaceEntry`` on the ``MIB_IPINTERFACE_ROW`` of each family for the MTU.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib.metadata
import ipaddress
import logging
import os
import platform
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from ctypes import POINTER, c_int, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from pathlib import Path
from typing import Any

from ..win32 import (
    BOOL,
    BOOLEAN,
    DWORD,
    ERROR_BUFFER_OVERFLOW,
    ERROR_HANDLE_EOF,
    ERROR_NO_MORE_ITEMS,
    ERROR_NOT_FOUND,
    ERROR_OBJECT_ALREADY_EXISTS,
    GUID,
    HANDLE,
    INFINITE_LIFETIME,
    LPCWSTR,
    NET_IFINDEX,
    NET_LUID,
    NETIO_STATUS,
    NO_ERROR,
    SOCKADDR_INET,
    WIN_AF_INET,
    WIN_AF_INET6,
    Prototype,
    bind,
    last_error,
    windll,
)
from .base import DeviceError, DeviceInfo

log = logging.getLogger("ztun")

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# -- wintun.h -----------------------------------------------------------------------------

WINTUN_MIN_RING_CAPACITY = 0x20000  # 128 KiB
WINTUN_MAX_RING_CAPACITY = 0x4000000  # 64 MiB
WINTUN_MAX_IP_PACKET_SIZE = 0xFFFF
#: 4 MiB per direction: about 2800 full 1500-byte packets of slack while the pump is busy.
DEFAULT_RING_CAPACITY = 0x400000
TUN_ALIGNMENT = 4  # sizeof(ULONG), api/session.c
TUN_PACKET_HEADER = 4  # TUN_PACKET.Size
MAX_ADAPTER_NAME = 128  # ipexport.h, terminator included
DEFAULT_TUNNEL_TYPE = "ztun"
#: Names the adapter's requested GUID (uuid5 of this + the name): the same adapter name
#: gets the same GUID every run, so Windows keeps one network profile (NLA) for it
#: instead of adding "Network 2, 3, ..." each time ztun starts.
ADAPTER_GUID_NAMESPACE = uuid.UUID("2f0b3a43-5f0e-4f7e-9a8e-7a74756e0000")

WINTUN_ADAPTER_HANDLE = c_void_p
WINTUN_SESSION_HANDLE = c_void_p
PBYTE = c_void_p  # BYTE *: kept as an address, copied with memoryview slices


# WINTUN_LOGGER_CALLBACK: VOID CALLBACK(WINTUN_LOGGER_LEVEL, DWORD64 Timestamp, LPCWSTR).
# CALLBACK is __stdcall, which x64 and arm64 ignore: CFUNCTYPE stands in off Windows.
_FUNCTYPE: Any = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
WINTUN_LOGGER_CALLBACK = _FUNCTYPE(None, c_int, c_uint64, LPCWSTR)
WINTUN_LOG_INFO, WINTUN_LOG_WARN, WINTUN_LOG_ERR = 0, 1, 2

WINTUN_PROTOTYPES: dict[str, Prototype] = {
    "WintunCreateAdapter": (WINTUN_ADAPTER_HANDLE, [LPCWSTR, LPCWSTR, POINTER(GUID)]),
    "WintunOpenAdapter": (WINTUN_ADAPTER_HANDLE, [LPCWSTR]),
    "WintunCloseAdapter": (None, [WINTUN_ADAPTER_HANDLE]),
    "WintunGetAdapterLUID": (None, [WINTUN_ADAPTER_HANDLE, POINTER(NET_LUID)]),
    "WintunGetRunningDriverVersion": (DWORD, []),
    "WintunSetLogger": (None, [WINTUN_LOGGER_CALLBACK]),
    "WintunStartSession": (WINTUN_SESSION_HANDLE, [WINTUN_ADAPTER_HANDLE, DWORD]),
    "WintunEndSession": (None, [WINTUN_SESSION_HANDLE]),
    "WintunGetReadWaitEvent": (HANDLE, [WINTUN_SESSION_HANDLE]),
    "WintunReceivePacket": (PBYTE, [WINTUN_SESSION_HANDLE, POINTER(DWORD)]),
    "WintunReleaseReceivePacket": (None, [WINTUN_SESSION_HANDLE, PBYTE]),
    "WintunAllocateSendPacket": (PBYTE, [WINTUN_SESSION_HANDLE, DWORD]),
    "WintunSendPacket": (None, [WINTUN_SESSION_HANDLE, PBYTE]),
}


def _log_from_wintun(level: int, _timestamp: int, message: str | None) -> None:
    py_level = {WINTUN_LOG_WARN: logging.WARNING, WINTUN_LOG_ERR: logging.ERROR}.get(
        level, logging.DEBUG
    )
    log.log(py_level, "wintun: %s", message)


class WintunApi:
    """wintun.dll's functions with their prototypes, plus the thread's last error."""

    def __init__(self, library: Any, *, last_error: Callable[[], int] = last_error) -> None:
        self.fn = bind(library, WINTUN_PROTOTYPES)
        self.last_error = last_error
        # ctypes frees a callback whose Python object dies: the DLL would call freed code.
        self._logger = WINTUN_LOGGER_CALLBACK(_log_from_wintun)
        self.fn["WintunSetLogger"](self._logger)

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ) -> WintunApi:
        """The pinned wintun.dll (:func:`locate_wintun`), verified before it is loaded."""
        path = locate_wintun(environ)
        verify_wintun(path.read_bytes(), wintun_arch(), str(path))
        return cls(windll(str(path)))

    def check_driver(self) -> None:
        """Refuse a running Wintun driver other than the pinned one (asked after an
        adapter exists: before that no driver need be loaded)."""
        version = int(self.fn["WintunGetRunningDriverVersion"]() or 0)
        running = ((version >> 16) & 0xFFFF, version & 0xFFFF)  # example.c's decoding
        if running != WINTUN_DRIVER_VERSION:
            shown = "none" if version == 0 else ".".join(map(str, running))
            raise DeviceError(
                errno.ENOTSUP,
                f"the running Wintun driver is {shown}, ztun is tested with "
                f"{'.'.join(map(str, WINTUN_DRIVER_VERSION))} only (error {self.last_error()}): "
                "remove other Wintun drivers (pnputil /enum-drivers) or reboot",
            )


# -- wintun.dll: only the pinned build ----------------------------------------------------
#
# wintun.dll runs in ztun's process as Administrator and installs a kernel driver, so
# only bytes ztun was tested with are loaded: the DLLs of Wintun 0.14.1 as the PyPI wheel
# pytun-pmd3 3.0.3 ships them (``pip install "ztun[windows]"`` pins it), or the same
# files from wintun.net named by ZTUN_WINTUN_DLL.  Both are checked against the SHA-256
# below and the DLL's VS_FIXEDFILEINFO file version before LoadLibrary; the running
# driver's version (WintunGetRunningDriverVersion) once an adapter exists.

WINTUN_DLL_ENV = "ZTUN_WINTUN_DLL"
WINTUN_WHEEL = "pytun-pmd3"
WINTUN_WHEEL_DIR = "pytun_pmd3/wintun/bin"
WINTUN_FILE_VERSION = (0, 14, 1, 0)
WINTUN_DRIVER_VERSION = (0, 14)
WINTUN_SHA256 = {
    "amd64": "e5da8447dc2c320edc0fc52fa01885c103de8c118481f683643cacc3220dafce",
    "arm64": "f7ba89005544be9d85231a9e0d5f23b2d15b3311667e2dad0debd344918a3f80",
    "x86": "d694fa46ab4cfebcb2632d094c7aa97278eef2f8052438621766d863ae98a931",
    "arm": "daad267411ecdc70a0535e274d2c3e9da3d0084bdac7662cb8424dd4a031b4d9",
}
_COMPILER_ARCH = {("64 bit", "AMD64"): "amd64", ("64 bit", "ARM64"): "arm64"}
_COMPILER_ARCH |= {("32 bit", "Intel"): "x86", ("32 bit", "ARM"): "arm"}


def wintun_arch(compiler: str | None = None) -> str:
    """Which wintun.dll this Python loads: its own architecture (a 32-bit Python on
    64-bit Windows needs the x86 DLL), from ``platform.python_compiler()``, e.g.
    ``MSC v.1938 64 bit (AMD64)``."""
    text = platform.python_compiler() if compiler is None else compiler
    for (bits, machine), arch in _COMPILER_ARCH.items():
        if bits in text and f"({machine})" in text:
            return arch
    raise DeviceError(errno.ENOTSUP, f"no pinned wintun.dll for a Python built by {text!r}")


def locate_wintun(environ: Mapping[str, str] = os.environ) -> Path:
    """ZTUN_WINTUN_DLL if set, else the DLL inside the installed pytun-pmd3 wheel (found
    through its metadata: the package itself, which loads DLLs on import, is never
    imported)."""
    given = environ.get(WINTUN_DLL_ENV)
    if given:
        return Path(given)
    try:
        dist = importlib.metadata.distribution(WINTUN_WHEEL)
    except importlib.metadata.PackageNotFoundError as exc:
        raise DeviceError(
            errno.ENOENT,
            f'wintun.dll not found: pip install "ztun[windows]" (it pins {WINTUN_WHEEL}, '
            f"which ships it) or set {WINTUN_DLL_ENV} to wintun.dll from wintun.net (0.14.1)",
        ) from exc
    return Path(str(dist.locate_file(f"{WINTUN_WHEEL_DIR}/{wintun_arch()}/wintun.dll")))


def pe_file_version(image: bytes) -> tuple[int, int, int, int]:
    """The file version in a PE image's VS_FIXEDFILEINFO (winver.h), found through the
    resource directory (winnt.h: RT_VERSION, its first name and language).  ValueError
    when the image has none."""
    try:
        (pe,) = struct.unpack_from("<I", image, 0x3C)  # IMAGE_DOS_HEADER.e_lfanew
        if image[pe : pe + 4] != b"PE\0\0":
            raise ValueError("not a PE image")
        coff = pe + 4  # IMAGE_FILE_HEADER
        (sections,) = struct.unpack_from("<H", image, coff + 2)
        (optional_size,) = struct.unpack_from("<H", image, coff + 16)
        optional = coff + 20
        (magic,) = struct.unpack_from("<H", image, optional)
        directories = optional + (112 if magic == 0x20B else 96)  # PE32+ / PE32
        rsrc_rva, _ = struct.unpack_from("<II", image, directories + 8 * 2)  # RESOURCE
        table = [
            struct.unpack_from("<8xIIII", image, optional + optional_size + 40 * i)
            for i in range(sections)
        ]  # IMAGE_SECTION_HEADER: VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData

        def offset(rva: int) -> int:
            for vsize, va, rawsize, rawptr in table:
                if va <= rva < va + max(vsize, rawsize):
                    return int(rva - va + rawptr)
            raise ValueError(f"RVA {rva:#x} is in no section")

        root = offset(rsrc_rva)

        def entries(directory: int) -> list[tuple[int, int]]:  # IMAGE_RESOURCE_DIRECTORY
            named, ids = struct.unpack_from("<HH", image, root + directory + 12)
            return [
                struct.unpack_from("<II", image, root + directory + 16 + 8 * i)
                for i in range(named + ids)
            ]

        version = next(e for e in entries(0) if e[0] == RT_VERSION)
        name = entries(version[1] & 0x7FFFFFFF)[0]
        language = entries(name[1] & 0x7FFFFFFF)[0]
        data_rva, _ = struct.unpack_from("<II", image, root + language[1])
        info = offset(data_rva)  # VS_VERSIONINFO: 3 WORDs, L"VS_VERSION_INFO\0", pad
        if image[info + 6 : info + 38] != "VS_VERSION_INFO\0".encode("utf-16-le"):
            raise ValueError("no VS_VERSION_INFO")
        signature, _, high, low = struct.unpack_from("<IIII", image, info + 40)
    except (struct.error, StopIteration, IndexError) as exc:
        raise ValueError(f"unreadable PE version resource: {exc!r}") from exc
    if signature != VS_FFI_SIGNATURE:
        raise ValueError(f"VS_FIXEDFILEINFO signature {signature:#x}")
    return (high >> 16, high & 0xFFFF, low >> 16, low & 0xFFFF)


RT_VERSION = 16  # winuser.h
VS_FFI_SIGNATURE = 0xFEEF04BD  # winver.h


def verify_wintun(image: bytes, arch: str, where: str) -> None:
    """Refuse a wintun.dll that is not the pinned build for ``arch``, saying what it is."""
    digest = hashlib.sha256(image).hexdigest()
    want = WINTUN_SHA256.get(arch)
    if digest != want:
        raise DeviceError(
            errno.EPERM,
            f"{where}: SHA-256 {digest} is not the pinned Wintun "
            f"{'.'.join(map(str, WINTUN_FILE_VERSION[:3]))} {arch} DLL ({want}); "
            f'use the DLL of {WINTUN_WHEEL} (pip install "ztun[windows]") or wintun.net',
        )
    try:
        version = pe_file_version(image)
    except ValueError as exc:
        raise DeviceError(errno.EPERM, f"{where}: {exc}") from exc
    if version != WINTUN_FILE_VERSION:
        raise DeviceError(
            errno.EPERM, f"{where}: file version {version}, pinned {WINTUN_FILE_VERSION}"
        )


# -- netioapi.h (iphlpapi.dll) ------------------------------------------------------------

IP_PREFIX_ORIGIN_MANUAL = 1  # NL_PREFIX_ORIGIN IpPrefixOriginManual
IP_SUFFIX_ORIGIN_MANUAL = 1  # NL_SUFFIX_ORIGIN IpSuffixOriginManual
IP_DAD_STATE_PREFERRED = 4  # NL_DAD_STATE IpDadStatePreferred: usable now, no DAD
SCOPE_LEVEL_COUNT = 16
IPV6_MIN_MTU = 1280  # RFC 8200 section 5: Windows refuses a smaller IPv6 NlMtu


class MIB_UNICASTIPADDRESS_ROW(ctypes.Structure):
    """netioapi.h; 80 bytes on x64: Address@0 InterfaceLuid@32 InterfaceIndex@40
    PrefixOrigin@44 SuffixOrigin@48 ValidLifetime@52 PreferredLifetime@56
    OnLinkPrefixLength@60 SkipAsSource@61 DadState@64 ScopeId@68 CreationTimeStamp@72."""

    _fields_ = [
        ("Address", SOCKADDR_INET),
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", NET_IFINDEX),
        ("PrefixOrigin", c_int),
        ("SuffixOrigin", c_int),
        ("ValidLifetime", c_uint32),
        ("PreferredLifetime", c_uint32),
        ("OnLinkPrefixLength", c_uint8),
        ("SkipAsSource", BOOLEAN),
        ("DadState", c_int),
        ("ScopeId", c_uint32),  # SCOPE_ID: a ULONG union
        ("CreationTimeStamp", c_int64),  # LARGE_INTEGER
    ]


class MIB_IPINTERFACE_ROW(ctypes.Structure):
    """netioapi.h; 168 bytes on x64 (offsets as wireguard-windows' winipcfg tests pin:
    InterfaceLuid@8 ... SitePrefixLength@144 Metric@148 NlMtu@152 ... 166)."""

    _fields_ = [
        ("Family", c_uint16),  # ADDRESS_FAMILY
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", NET_IFINDEX),
        ("MaxReassemblySize", c_uint32),
        ("InterfaceIdentifier", c_uint64),
        ("MinRouterAdvertisementInterval", c_uint32),
        ("MaxRouterAdvertisementInterval", c_uint32),
        ("AdvertisingEnabled", BOOLEAN),
        ("ForwardingEnabled", BOOLEAN),
        ("WeakHostSend", BOOLEAN),
        ("WeakHostReceive", BOOLEAN),
        ("UseAutomaticMetric", BOOLEAN),
        ("UseNeighborUnreachabilityDetection", BOOLEAN),
        ("ManagedAddressConfigurationSupported", BOOLEAN),
        ("OtherStatefulConfigurationSupported", BOOLEAN),
        ("AdvertiseDefaultRoute", BOOLEAN),
        ("RouterDiscoveryBehavior", c_int),
        ("DadTransmits", c_uint32),
        ("BaseReachableTime", c_uint32),
        ("RetransmitTime", c_uint32),
        ("PathMtuDiscoveryTimeout", c_uint32),
        ("LinkLocalAddressBehavior", c_int),
        ("LinkLocalAddressTimeout", c_uint32),
        ("ZoneIndices", c_uint32 * SCOPE_LEVEL_COUNT),
        ("SitePrefixLength", c_uint32),
        ("Metric", c_uint32),
        ("NlMtu", c_uint32),
        ("Connected", BOOLEAN),
        ("SupportsWakeUpPatterns", BOOLEAN),
        ("SupportsNeighborDiscovery", BOOLEAN),
        ("SupportsRouterDiscovery", BOOLEAN),
        ("ReachableTime", c_uint32),
        ("TransmitOffload", c_uint8),  # NL_INTERFACE_OFFLOAD_ROD: 8 one-bit flags
        ("ReceiveOffload", c_uint8),
        ("DisableDefaultRoutes", BOOLEAN),
    ]


IPHLPAPI_PROTOTYPES: dict[str, Prototype] = {
    "InitializeUnicastIpAddressEntry": (None, [POINTER(MIB_UNICASTIPADDRESS_ROW)]),
    "CreateUnicastIpAddressEntry": (NETIO_STATUS, [POINTER(MIB_UNICASTIPADDRESS_ROW)]),
    "InitializeIpInterfaceEntry": (None, [POINTER(MIB_IPINTERFACE_ROW)]),
    "GetIpInterfaceEntry": (NETIO_STATUS, [POINTER(MIB_IPINTERFACE_ROW)]),
    "SetIpInterfaceEntry": (NETIO_STATUS, [POINTER(MIB_IPINTERFACE_ROW)]),
    "ConvertInterfaceLuidToIndex": (NETIO_STATUS, [POINTER(NET_LUID), POINTER(NET_IFINDEX)]),
}


def fill_unicast_row(
    row: MIB_UNICASTIPADDRESS_ROW, luid: NET_LUID, iface: IpInterface
) -> MIB_UNICASTIPADDRESS_ROW:
    """An address as wireguard-windows adds one: manual, never expiring, preferred at
    once (a TUN has no neighbours for DAD to probe), its prefix on-link."""
    row.Address = SOCKADDR_INET.of(iface.ip)
    row.InterfaceLuid = luid
    row.PrefixOrigin = IP_PREFIX_ORIGIN_MANUAL
    row.SuffixOrigin = IP_SUFFIX_ORIGIN_MANUAL
    row.ValidLifetime = INFINITE_LIFETIME
    row.PreferredLifetime = INFINITE_LIFETIME
    row.OnLinkPrefixLength = iface.network.prefixlen
    row.DadState = IP_DAD_STATE_PREFERRED
    return row


def _settable(row: MIB_IPINTERFACE_ROW) -> MIB_IPINTERFACE_ROW:
    """SetIpInterfaceEntry rejects an IPv4 row whose SitePrefixLength is not 0 (the
    SetIpInterfaceEntry remarks; wireguard-windows clears it too), and Get fills it."""
    if row.Family == WIN_AF_INET:
        row.SitePrefixLength = 0
    return row


def set_row_mtu(row: MIB_IPINTERFACE_ROW, mtu: int) -> MIB_IPINTERFACE_ROW:
    """Prepare a row read by GetIpInterfaceEntry for SetIpInterfaceEntry with ``mtu``."""
    row.NlMtu = mtu
    return _settable(row)


def set_row_metric(row: MIB_IPINTERFACE_ROW, metric: int) -> MIB_IPINTERFACE_ROW:
    """Prepare a row read by GetIpInterfaceEntry for SetIpInterfaceEntry with a fixed
    ``metric`` (UseAutomaticMetric off: Windows would otherwise recompute it)."""
    row.UseAutomaticMetric = 0
    row.Metric = metric
    return _settable(row)


class IpHelper:
    """The iphlpapi.dll calls that configure the adapter."""

    def __init__(self, library: Any) -> None:
        self.fn = bind(library, IPHLPAPI_PROTOTYPES)

    @classmethod
    def load(cls) -> IpHelper:  # pragma: no cover - Windows only
        return cls(windll("iphlpapi.dll"))

    def _check(self, status: int, what: str) -> None:
        if status != NO_ERROR:
            raise DeviceError(errno.EIO, f"{what}: Windows error {status}")

    def luid_to_index(self, luid: NET_LUID) -> int:
        index = NET_IFINDEX()
        self._check(
            self.fn["ConvertInterfaceLuidToIndex"](ctypes.byref(luid), ctypes.byref(index)),
            "ConvertInterfaceLuidToIndex",
        )
        return int(index.value)

    def add_address(self, luid: NET_LUID, iface: IpInterface) -> None:
        row = MIB_UNICASTIPADDRESS_ROW()
        self.fn["InitializeUnicastIpAddressEntry"](ctypes.byref(row))
        fill_unicast_row(row, luid, iface)
        status = self.fn["CreateUnicastIpAddressEntry"](ctypes.byref(row))
        if status != ERROR_OBJECT_ALREADY_EXISTS:
            self._check(status, f"CreateUnicastIpAddressEntry {iface}")

    def set_mtu(self, luid: NET_LUID, family: int, mtu: int) -> bool:
        """Set the family's NlMtu; False if the adapter has no such IP interface (e.g.
        IPv6 disabled on it)."""
        return self._update_interface(luid, family, lambda row: set_row_mtu(row, mtu), f"mtu {mtu}")

    def set_metric(self, luid: NET_LUID, family: int, metric: int) -> bool:
        """Turn the family's automatic metric off and set ``metric`` (auto-route: the
        tunnel's routes win ties); False if there is no such IP interface."""
        return self._update_interface(
            luid, family, lambda row: set_row_metric(row, metric), f"metric {metric}"
        )

    def _update_interface(
        self,
        luid: NET_LUID,
        family: int,
        change: Callable[[MIB_IPINTERFACE_ROW], MIB_IPINTERFACE_ROW],
        what: str,
    ) -> bool:
        """GetIpInterfaceEntry, change the row, SetIpInterfaceEntry (the documented
        read-modify-write: Set takes the whole row)."""
        row = MIB_IPINTERFACE_ROW()
        self.fn["InitializeIpInterfaceEntry"](ctypes.byref(row))
        row.Family = family
        row.InterfaceLuid = luid
        status = self.fn["GetIpInterfaceEntry"](ctypes.byref(row))
        if status == ERROR_NOT_FOUND:
            return False
        self._check(status, f"GetIpInterfaceEntry family {family}")
        change(row)
        self._check(
            self.fn["SetIpInterfaceEntry"](ctypes.byref(row)), f"SetIpInterfaceEntry {what}"
        )
        return True


# -- synchapi.h (kernel32.dll) ------------------------------------------------------------

WAIT_OBJECT_0 = 0x0
WAIT_TIMEOUT = 0x102
WAIT_FAILED = 0xFFFFFFFF
INFINITE = 0xFFFFFFFF

KERNEL32_PROTOTYPES: dict[str, Prototype] = {
    # HANDLE CreateEventW(LPSECURITY_ATTRIBUTES, BOOL bManualReset, BOOL bInitialState, LPCWSTR)
    "CreateEventW": (HANDLE, [c_void_p, BOOL, BOOL, LPCWSTR]),
    "SetEvent": (BOOL, [HANDLE]),
    "CloseHandle": (BOOL, [HANDLE]),
    # DWORD WaitForMultipleObjects(DWORD nCount, const HANDLE *, BOOL bWaitAll, DWORD ms)
    "WaitForMultipleObjects": (DWORD, [DWORD, POINTER(HANDLE), BOOL, DWORD]),
}


class Kernel32:
    def __init__(self, library: Any) -> None:
        self.fn = bind(library, KERNEL32_PROTOTYPES)

    @classmethod
    def load(cls) -> Kernel32:  # pragma: no cover - Windows only
        return cls(windll("kernel32.dll"))


# -- the device ---------------------------------------------------------------------------


def check_capacity(capacity: int) -> int:
    """Wintun's rule for ring capacity (WintunStartSession fails otherwise, with a less
    helpful ERROR_INVALID_PARAMETER)."""
    if not (
        WINTUN_MIN_RING_CAPACITY <= capacity <= WINTUN_MAX_RING_CAPACITY
        and capacity & (capacity - 1) == 0
    ):
        raise ValueError(
            f"wintun ring capacity {capacity:#x}: must be a power of two from "
            f"{WINTUN_MIN_RING_CAPACITY:#x} to {WINTUN_MAX_RING_CAPACITY:#x}"
        )
    return capacity


def ring_footprint(packet_size: int) -> int:
    """Bytes a packet takes in the ring: TUN_ALIGN(sizeof(TUN_PACKET) + size)."""
    return (TUN_PACKET_HEADER + packet_size + TUN_ALIGNMENT - 1) & ~(TUN_ALIGNMENT - 1)


def adapter_guid(name: str) -> uuid.UUID:
    return uuid.uuid5(ADAPTER_GUID_NAMESPACE, name)


def _timeout_ms(timeout: float | None) -> int:
    if timeout is None:
        return INFINITE
    return max(0, min(int(timeout * 1000), INFINITE - 1))


class WintunDevice(DeviceInfo):
    """An open Wintun session on an adapter this process created (closing it removes the
    adapter, its addresses and routes -- like a non-persistent Linux TUN)."""

    def __init__(
        self,
        api: WintunApi,
        kernel32: Kernel32,
        adapter: int,
        session: int,
        *,
        name: str,
        luid: NET_LUID,
        index: int = 0,
        mtu: int = 1500,
    ) -> None:
        self._api = api
        self._k32 = kernel32
        self._adapter: int | None = adapter
        self._session: int | None = session
        self._name = name
        self._luid = luid
        self._index = index
        self._mtu = mtu
        f = api.fn
        self._receive = f["WintunReceivePacket"]
        self._release = f["WintunReleaseReceivePacket"]
        self._allocate = f["WintunAllocateSendPacket"]
        self._send = f["WintunSendPacket"]
        self._read_event = int(f["WintunGetReadWaitEvent"](session) or 0)
        # Auto-reset, unsignalled: wake() makes one wait_readable() return.
        self._wake_event = int(kernel32.fn["CreateEventW"](None, False, False, None) or 0)
        if not self._wake_event:
            raise DeviceError(errno.EIO, f"CreateEventW: Windows error {api.last_error()}")
        self._handles = (HANDLE * 2)(self._read_event, self._wake_event)
        self._size = DWORD()
        self._size_p = ctypes.pointer(self._size)  # made once: read_into allocates nothing
        # Empty is only known after ERROR_NO_MORE_ITEMS: until then, do not wait.
        self._may_have_data = True
        #: Packets truncated on read / refused on write, by reason.
        self.errors: Counter[str] = Counter()

    @property
    def luid(self) -> NET_LUID:
        """The adapter's NET_LUID, what route rows (ztun.route.windows) name it by."""
        return self._luid

    @property
    def read_event(self) -> int:
        """The session's read-wait event (a HANDLE); owned by the session."""
        return self._read_event

    def fileno(self) -> int:
        raise DeviceError(
            errno.EOPNOTSUPP,
            "a Wintun session has no file descriptor: wait with wait_readable() "
            "(see ztun.tun.windows)",
        )

    def wait_readable(self, timeout: float | None = None) -> bool:
        """Block until a packet may be read, wake() is called, or ``timeout`` passes
        (False).  Returns at once if the last read did not find the ring empty."""
        if self._may_have_data:
            return True
        result = self._k32.fn["WaitForMultipleObjects"](
            2, self._handles, False, _timeout_ms(timeout)
        )
        if result == WAIT_TIMEOUT:
            return False
        if result == WAIT_FAILED:
            raise DeviceError(errno.EIO, f"WaitForMultipleObjects: error {self._api.last_error()}")
        return True

    def wake(self) -> None:
        """Make a blocked wait_readable() return (a stopping pump calls this)."""
        self._k32.fn["SetEvent"](self._wake_event)

    def read_into(self, buf: memoryview) -> int:
        ptr = self._receive(self._session, self._size_p)
        if not ptr:
            err = self._api.last_error()
            if err == ERROR_NO_MORE_ITEMS:
                self._may_have_data = False
                raise BlockingIOError(errno.EAGAIN, "wintun ring empty")
            if err == ERROR_HANDLE_EOF:
                raise DeviceError(errno.EPIPE, "wintun adapter is terminating")
            raise DeviceError(errno.EIO, f"WintunReceivePacket: Windows error {err}")
        self._may_have_data = True
        try:
            size = self._size.value
            n = min(size, len(buf))
            if n < size:
                self.errors["rx_truncated"] += 1
            buf[:n] = memoryview((ctypes.c_char * n).from_address(ptr)).cast("B")
        finally:
            self._release(self._session, ptr)
        return n

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        src = memoryview(packet).cast("B")  # before allocating: a bad buffer fails here
        n = src.nbytes
        if not 0 < n <= WINTUN_MAX_IP_PACKET_SIZE:
            self.errors["tx_size"] += 1
            raise DeviceError(
                errno.EMSGSIZE, f"wintun: packet of {n} bytes (1..{WINTUN_MAX_IP_PACKET_SIZE})"
            )
        ptr = self._allocate(self._session, n)
        if not ptr:
            err = self._api.last_error()
            if err == ERROR_BUFFER_OVERFLOW:
                raise BlockingIOError(errno.ENOBUFS, "wintun ring full")
            if err == ERROR_HANDLE_EOF:
                raise DeviceError(errno.EPIPE, "wintun adapter is terminating")
            raise DeviceError(errno.EIO, f"WintunAllocateSendPacket: Windows error {err}")
        # Allocated slots are sent in allocation order and one never sent would stall
        # the ring, so nothing that can fail comes between allocate and send.
        memoryview((ctypes.c_char * n).from_address(ptr)).cast("B")[:] = src
        self._send(self._session, ptr)
        return n

    write_frame = write

    def close(self) -> None:
        if self._session is not None:
            self._api.fn["WintunEndSession"](self._session)
            self._session = None
        if self._adapter is not None:
            self._api.fn["WintunCloseAdapter"](self._adapter)
            self._adapter = None
        if self._wake_event:
            self._k32.fn["CloseHandle"](self._wake_event)
            self._wake_event = 0


def open_wintun(
    name: str,
    *,
    mtu: int = 1500,
    addresses: Iterable[IpInterface] = (),
    capacity: int = DEFAULT_RING_CAPACITY,
    tunnel_type: str = DEFAULT_TUNNEL_TYPE,
    api: WintunApi | None = None,
    iphlp: IpHelper | None = None,
    kernel32: Kernel32 | None = None,
) -> WintunDevice:
    """Create the Wintun adapter ``name``, start a session, set MTU and addresses.
    Needs Windows, Administrator and wintun.dll (tests pass fake function tables)."""
    if not name or len(name) >= MAX_ADAPTER_NAME:
        raise ValueError(f"adapter name {name!r}: must be 1..{MAX_ADAPTER_NAME - 1} characters")
    if not 0 < mtu <= WINTUN_MAX_IP_PACKET_SIZE:
        raise ValueError(f"mtu {mtu}: must be 1..{WINTUN_MAX_IP_PACKET_SIZE} on Wintun")
    check_capacity(capacity)
    addresses = list(addresses)
    api = api if api is not None else WintunApi.load()
    iphlp = iphlp if iphlp is not None else IpHelper.load()
    kernel32 = kernel32 if kernel32 is not None else Kernel32.load()
    fn = api.fn
    guid = GUID.from_uuid(adapter_guid(name))
    adapter = fn["WintunCreateAdapter"](name, tunnel_type, ctypes.byref(guid))
    if not adapter:
        raise DeviceError(
            errno.EIO,
            f"WintunCreateAdapter {name!r}: Windows error {api.last_error()} "
            "(Administrator needed; is wintun.dll the right architecture?)",
        )
    session = None
    try:
        api.check_driver()
        luid = NET_LUID()
        fn["WintunGetAdapterLUID"](adapter, ctypes.byref(luid))
        session = fn["WintunStartSession"](adapter, capacity)
        if not session:
            raise DeviceError(errno.EIO, f"WintunStartSession: Windows error {api.last_error()}")
        device = WintunDevice(
            api,
            kernel32,
            adapter,
            session,
            name=name,
            luid=luid,
            index=iphlp.luid_to_index(luid),
            mtu=mtu,
        )
    except BaseException:
        if session:
            fn["WintunEndSession"](session)
        fn["WintunCloseAdapter"](adapter)
        raise
    try:
        configure(iphlp, luid, mtu, addresses)
    except BaseException:
        device.close()
        raise
    return device


def configure(iphlp: IpHelper, luid: NET_LUID, mtu: int, addresses: Sequence[IpInterface]) -> None:
    """MTU on both IP interfaces of the adapter, then the addresses."""
    iphlp.set_mtu(luid, WIN_AF_INET, mtu)
    if mtu >= IPV6_MIN_MTU:
        iphlp.set_mtu(luid, WIN_AF_INET6, mtu)
    elif any(a.version == 6 for a in addresses):
        log.warning("mtu %d is below IPv6's minimum %d: IPv6 keeps its own", mtu, IPV6_MIN_MTU)
    for iface in addresses:
        iphlp.add_address(luid, iface)
