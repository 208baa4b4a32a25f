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
import ipaddress
import logging
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from ctypes import POINTER, c_int, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from typing import Any

from ..route.windows import (
    ERROR_OBJECT_ALREADY_EXISTS,
    INFINITE_LIFETIME,
    NET_LUID,
    NO_ERROR,
    SOCKADDR_INET,
    WIN_AF_INET,
    WIN_AF_INET6,
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

# winerror.h
ERROR_INVALID_DATA = 13
ERROR_HANDLE_EOF = 38
ERROR_BUFFER_OVERFLOW = 111
ERROR_NO_MORE_ITEMS = 259
ERROR_NOT_FOUND = 1168

# C types as the headers name them. DWORD is 32-bit on Windows (ctypes.wintypes.DWORD is
# c_ulong, 64-bit on Linux, so it is spelled out); handles are pointers.
DWORD = c_uint32
BOOL = c_int
BOOLEAN = c_uint8
HANDLE = c_void_p
WINTUN_ADAPTER_HANDLE = c_void_p
WINTUN_SESSION_HANDLE = c_void_p
LPCWSTR = ctypes.c_wchar_p
PBYTE = c_void_p  # BYTE *: kept as an address, copied with memoryview slices
NETIO_STATUS = DWORD
NET_IFINDEX = c_uint32


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


# WINTUN_LOGGER_CALLBACK: VOID CALLBACK(WINTUN_LOGGER_LEVEL, DWORD64 Timestamp, LPCWSTR).
# CALLBACK is __stdcall, which x64 and arm64 ignore: CFUNCTYPE stands in off Windows.
_FUNCTYPE: Any = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)
WINTUN_LOGGER_CALLBACK = _FUNCTYPE(None, c_int, c_uint64, LPCWSTR)
WINTUN_LOG_INFO, WINTUN_LOG_WARN, WINTUN_LOG_ERR = 0, 1, 2

Prototype = tuple[Any, list[Any]]  # (restype, argtypes)

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


def _windll(name: str) -> Any:
    if sys.platform != "win32":
        raise DeviceError(errno.ENOTSUP, f"{name} exists only on Windows")
    try:
        return ctypes.WinDLL(name, use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    except OSError as exc:
        raise DeviceError(
            errno.ENOENT, f"cannot load {name}: {exc} (wintun.dll comes from wintun.net)"
        ) from exc


def _last_error() -> int:
    get: Callable[[], int] = ctypes.get_last_error  # type: ignore[attr-defined,unused-ignore]
    return get()


def _log_from_wintun(level: int, _timestamp: int, message: str | None) -> None:
    py_level = {WINTUN_LOG_WARN: logging.WARNING, WINTUN_LOG_ERR: logging.ERROR}.get(
        level, logging.DEBUG
    )
    log.log(py_level, "wintun: %s", message)


class WintunApi:
    """wintun.dll's functions with their prototypes, plus the thread's last error."""

    def __init__(self, library: Any, *, last_error: Callable[[], int] = _last_error) -> None:
        self.fn = bind(library, WINTUN_PROTOTYPES)
        self.last_error = last_error
        # ctypes frees a callback whose Python object dies: the DLL would call freed code.
        self._logger = WINTUN_LOGGER_CALLBACK(_log_from_wintun)
        self.fn["WintunSetLogger"](self._logger)

    @classmethod
    def load(cls, path: str = "wintun.dll") -> WintunApi:  # pragma: no cover - Windows only
        return cls(_windll(path))


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


def set_row_mtu(row: MIB_IPINTERFACE_ROW, mtu: int) -> MIB_IPINTERFACE_ROW:
    """Prepare a row read by GetIpInterfaceEntry for SetIpInterfaceEntry with ``mtu``.
    SetIpInterfaceEntry rejects an IPv4 row whose SitePrefixLength is not 0 (the
    SetIpInterfaceEntry remarks; wireguard-windows clears it too), and Get fills it."""
    row.NlMtu = mtu
    if row.Family == WIN_AF_INET:
        row.SitePrefixLength = 0
    return row


class IpHelper:
    """The iphlpapi.dll calls that configure the adapter."""

    def __init__(self, library: Any) -> None:
        self.fn = bind(library, IPHLPAPI_PROTOTYPES)

    @classmethod
    def load(cls) -> IpHelper:  # pragma: no cover - Windows only
        return cls(_windll("iphlpapi.dll"))

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
        row = MIB_IPINTERFACE_ROW()
        self.fn["InitializeIpInterfaceEntry"](ctypes.byref(row))
        row.Family = family
        row.InterfaceLuid = luid
        status = self.fn["GetIpInterfaceEntry"](ctypes.byref(row))
        if status == ERROR_NOT_FOUND:
            return False
        self._check(status, f"GetIpInterfaceEntry family {family}")
        set_row_mtu(row, mtu)
        self._check(
            self.fn["SetIpInterfaceEntry"](ctypes.byref(row)), f"SetIpInterfaceEntry mtu {mtu}"
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
        return cls(_windll("kernel32.dll"))


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
