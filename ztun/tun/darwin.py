"""macOS utun: a kernel-control socket that carries IP packets behind a 4-byte family word.

MOCK NOTICE: opening a utun (:func:`open_utun`) needs a macOS kernel and refuses to run
elsewhere.  Everything it sends to the kernel -- the ioctl structures, the connect
address, the packet framing -- is built by pure functions here and tested byte for byte
against the XNU headers on Linux; :class:`DarwinUtun` itself is exercised through a
socketpair standing in for the control socket.

How a utun is made (XNU ``bsd/sys/kern_control.h``, ``bsd/sys/sys_domain.h``,
``bsd/net/if_utun.h``)::

    s = socket(PF_SYSTEM, SOCK_DGRAM, SYSPROTO_CONTROL)
    ioctl(s, CTLIOCGINFO, struct ctl_info {ctl_id = 0, ctl_name = UTUN_CONTROL_NAME})
    connect(s, struct sockaddr_ctl {sc_id = ctl_id, sc_unit = N + 1})   # 0: next free
    getsockopt(s, SYSPROTO_CONTROL, UTUN_OPT_IFNAME) -> "utunN"

Layouts (LP64, host byte order -- little-endian on x86_64 and arm64)::

    struct ctl_info      100  u_int32_t ctl_id @0; char ctl_name[MAX_KCTL_NAME=96] @4
    struct sockaddr_ctl   32  u_char sc_len @0, sc_family @1; u_int16_t ss_sysaddr @2;
                              u_int32_t sc_id @4, sc_unit @8, sc_reserved[5] @12
    struct ifreq          32  char ifr_name[16]; union (int ifru_mtu, short ifru_flags) @16
    struct ifaliasreq     64  ifra_name[16]; sockaddr ifra_addr @16, ifra_broadaddr @32
                              (the destination on a point-to-point link), ifra_mask @48
    struct in6_aliasreq  128  ifra_name[16]; sockaddr_in6 ifra_addr @16, ifra_dstaddr @44,
                              ifra_prefixmask @72; int ifra_flags @100;
                              in6_addrlifetime {time_t expire, preferred; u_int32_t
                              vltime, pltime} @104     (``bsd/netinet6/in6_var.h``)

CPython connects a ``PF_SYSTEM``/``SYSPROTO_CONTROL`` socket from the pair
``(sc_id, sc_unit)`` (``Modules/socketmodule.c``, ``getsockaddrarg``), filling the
``sockaddr_ctl`` above; the kernel takes ``sc_len`` from the address length the syscall
passes.  :func:`sockaddr_ctl` builds the same 32 bytes so the layout is pinned by a test.

Framing: every packet read from or written to the socket starts with the protocol family
as a 32-bit big-endian word (``htonl(AF_INET)`` = ``00 00 00 02``, ``htonl(AF_INET6)`` =
``00 00 00 1e``: ``AF_INET6`` is 30 on Darwin).  The device strips and adds it itself
(``readv``/``writev`` into two buffers: no copy), so ``frame_header_len`` is 0 and the
engine sees plain IP packets, as on Linux.  The seed's ``[0x02, 0, 0, 0]`` is that word in
the wrong byte order.

Addresses and MTU are set with ioctls on an ``AF_INET``/``AF_INET6`` datagram socket, the
same calls ``ifconfig`` makes.  :func:`configure_requests` returns them as data; the
equivalent commands, for a human reproducing a setup, are::

    ifconfig utun3 mtu 1500
    ifconfig utun3 inet 172.19.0.1 172.19.0.2 netmask 255.255.255.252
    ifconfig utun3 inet6 fdfe:dcba:9876::1 prefixlen 126     # + IN6_IFF_NODAD, no expiry
    ifconfig utun3 up

A utun is point-to-point: an IPv4 address needs a destination, and the kernel installs a
host route to it.  ztun uses the stack's hairpin peer (:func:`ztun.stack.system.hairpin_peer`)
as that destination, so the route the NAT hairpin needs comes with the address.  KAME
allows an IPv6 destination only with prefix length 128; a shorter IPv6 prefix gets the
prefix route instead.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..route.darwin import DARWIN_AF_INET, DARWIN_AF_INET6, sockaddr_in, sockaddr_in6
from .base import DeviceError, DeviceInfo

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# bsd/sys/socket.h, bsd/sys/sys_domain.h
PF_SYSTEM = 32  # == AF_SYSTEM
SYSPROTO_CONTROL = 2
AF_SYS_CONTROL = 2  # ss_sysaddr of a kernel-control address
# bsd/sys/kern_control.h
MAX_KCTL_NAME = 96
# bsd/net/if_utun.h
UTUN_CONTROL_NAME = "com.apple.net.utun_control"
UTUN_OPT_IFNAME = 2
# bsd/net/if.h, bsd/netinet6/in6_var.h, bsd/netinet6/nd6.h
IFNAMSIZ = 16
IFF_UP = 0x1
IN6_IFF_NODAD = 0x0020  # a utun has no neighbours to collide with: skip DAD's delay
ND6_INFINITE_LIFETIME = 0xFFFFFFFF

# bsd/sys/ioccom.h: _IOC(inout, group, num, len)
IOC_OUT = 0x40000000
IOC_IN = 0x80000000
IOC_INOUT = IOC_IN | IOC_OUT
IOCPARM_MASK = 0x1FFF

CTL_INFO = struct.Struct("<I96s")
SOCKADDR_CTL = struct.Struct("<BBHII5I")
IFREQ_MTU = struct.Struct("<16si12x")
IFREQ_FLAGS = struct.Struct("<16sh14x")
IFALIASREQ = struct.Struct("<16s16s16s16s")
IN6_ALIASREQ = struct.Struct("<16s28s28s28siqqII")


def _ioc(inout: int, group: str, num: int, length: int) -> int:
    return inout | ((length & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


CTLIOCGINFO = _ioc(IOC_INOUT, "N", 3, CTL_INFO.size)  # kern_control.h
SIOCSIFFLAGS = _ioc(IOC_IN, "i", 16, IFREQ_FLAGS.size)  # sys/sockio.h
SIOCGIFFLAGS = _ioc(IOC_INOUT, "i", 17, IFREQ_FLAGS.size)
SIOCAIFADDR = _ioc(IOC_IN, "i", 26, IFALIASREQ.size)
SIOCSIFMTU = _ioc(IOC_IN, "i", 52, IFREQ_MTU.size)
SIOCAIFADDR_IN6 = _ioc(IOC_IN, "i", 26, IN6_ALIASREQ.size)  # netinet6/in6_var.h

#: The 4-byte family word in front of every utun packet, by IP version.
UTUN_HDR_LEN = 4
AF_INET_HDR = DARWIN_AF_INET.to_bytes(UTUN_HDR_LEN, "big")
AF_INET6_HDR = DARWIN_AF_INET6.to_bytes(UTUN_HDR_LEN, "big")
_HDR_BY_VERSION = {4: AF_INET_HDR, 6: AF_INET6_HDR}
_KNOWN_HDRS = (AF_INET_HDR, AF_INET6_HDR)
#: Bad frames skipped in one read_into call before it yields (BlockingIOError) to the
#: caller's poll loop: garbage from the kernel can never pin the pump in one call.
READ_SKIP_LIMIT = 64

_UTUN_NAME = re.compile(r"utun(0|[1-9][0-9]{0,8})")


def utun_unit(name: str) -> int:
    """The ``sc_unit`` that asks for ``name``: N + 1 for ``utunN``, 0 (next free) for ``""``
    or ``"utun"``.  macOS names utuns itself, so any other name is an error."""
    if name in ("", "utun"):
        return 0
    match = _UTUN_NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"device name {name!r}: macOS names TUN devices utunN -- use tun://utunN "
            "(e.g. tun://utun7) or tun://utun for the next free one"
        )
    return int(match.group(1)) + 1


def ctl_info(name: str = UTUN_CONTROL_NAME) -> bytes:
    """CTLIOCGINFO's argument: ctl_id 0 (filled by the kernel), the NUL-padded name."""
    raw = name.encode()
    if len(raw) >= MAX_KCTL_NAME:
        raise ValueError(f"kernel control name {name!r} is longer than {MAX_KCTL_NAME - 1}")
    return CTL_INFO.pack(0, raw)


def parse_ctl_info(raw: bytes) -> int:
    """The ctl_id the kernel wrote back."""
    ctl_id, _ = CTL_INFO.unpack(raw)
    return int(ctl_id)


def sockaddr_ctl(ctl_id: int, unit: int) -> bytes:
    """The connect address CPython builds from ``(ctl_id, unit)``, with sc_len set."""
    return SOCKADDR_CTL.pack(
        SOCKADDR_CTL.size, PF_SYSTEM, AF_SYS_CONTROL, ctl_id, unit, 0, 0, 0, 0, 0
    )


def _ifname(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r}: must be 1..{IFNAMSIZ - 1} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class IfRequest:
    """One interface ioctl: issued on a datagram socket of ``family`` (the ioctl's
    protocol); ``what`` names it in errors, the way ``ifconfig`` would."""

    family: int
    request: int
    payload: bytes
    what: str


def mtu_request(ifname: str, mtu: int) -> IfRequest:
    return IfRequest(
        socket.AF_INET, SIOCSIFMTU, IFREQ_MTU.pack(_ifname(ifname), mtu), f"{ifname} mtu {mtu}"
    )


def flags_get_request(ifname: str) -> IfRequest:
    return IfRequest(
        socket.AF_INET, SIOCGIFFLAGS, IFREQ_FLAGS.pack(_ifname(ifname), 0), f"{ifname} flags"
    )


def up_request(ifname: str, flags: int) -> IfRequest:
    """SIOCSIFFLAGS with IFF_UP added to the flags SIOCGIFFLAGS returned."""
    value = (flags | IFF_UP) & 0xFFFF
    signed = value - 0x10000 if value & 0x8000 else value  # ifru_flags is a short
    return IfRequest(
        socket.AF_INET, SIOCSIFFLAGS, IFREQ_FLAGS.pack(_ifname(ifname), signed), f"{ifname} up"
    )


def parse_flags(raw: bytes) -> int:
    _, flags = IFREQ_FLAGS.unpack(raw)
    return int(flags) & 0xFFFF


def _p2p_destination(iface: IpInterface) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    from ..stack.system import hairpin_peer

    try:
        return hairpin_peer(iface)
    except ValueError:
        # A /32 has no second address; the stack refuses it with its own message. The
        # device still comes up, pointing at itself as wg-quick does.
        return iface.ip


def inet_request(ifname: str, iface: ipaddress.IPv4Interface) -> IfRequest:
    dst = _p2p_destination(iface)
    assert isinstance(dst, ipaddress.IPv4Address)
    payload = IFALIASREQ.pack(
        _ifname(ifname), sockaddr_in(iface.ip), sockaddr_in(dst), sockaddr_in(iface.netmask)
    )
    return IfRequest(
        socket.AF_INET,
        SIOCAIFADDR,
        payload,
        f"{ifname} inet {iface.ip} {dst} netmask {iface.netmask}",
    )


def inet6_request(ifname: str, iface: ipaddress.IPv6Interface) -> IfRequest:
    dst = b""
    if iface.network.prefixlen == 128:
        dst = sockaddr_in6(ipaddress.IPv6Address((int(iface.ip) + 1) % (1 << 128)))
    payload = IN6_ALIASREQ.pack(
        _ifname(ifname),
        sockaddr_in6(iface.ip),
        dst,  # zero-filled: no destination unless /128 (KAME's rule)
        sockaddr_in6(iface.netmask),
        IN6_IFF_NODAD,
        0,
        0,
        ND6_INFINITE_LIFETIME,
        ND6_INFINITE_LIFETIME,
    )
    return IfRequest(
        socket.AF_INET6,
        SIOCAIFADDR_IN6,
        payload,
        f"{ifname} inet6 {iface.ip} prefixlen {iface.network.prefixlen}",
    )


def configure_requests(ifname: str, mtu: int, addresses: Iterable[IpInterface]) -> list[IfRequest]:
    """MTU first (so no packet goes out at the default), then every address; bringing the
    link up needs its current flags, so that step is :func:`up_request` after a read."""
    requests = [mtu_request(ifname, mtu)]
    for iface in addresses:
        if isinstance(iface, ipaddress.IPv4Interface):
            requests.append(inet_request(ifname, iface))
        else:
            requests.append(inet6_request(ifname, iface))
    return requests


Ioctl = Callable[[int, int, bytes], bytes]


def apply_requests(
    ifname: str, requests: Iterable[IfRequest], *, ioctl: Ioctl | None = None
) -> None:
    """Issue the requests, then set IFF_UP. ``ioctl(fd, request, payload)`` is
    ``fcntl.ioctl`` unless a test records the calls."""
    if ioctl is None:
        import fcntl  # POSIX only: imported where used, so this module loads on Windows

        ioctl = fcntl.ioctl
    call: Ioctl = ioctl
    socks: dict[int, socket.socket] = {}

    def run(req: IfRequest) -> bytes:
        sock = socks.get(req.family)
        if sock is None:
            sock = socks[req.family] = socket.socket(req.family, socket.SOCK_DGRAM)
        try:
            return call(sock.fileno(), req.request, req.payload)
        except OSError as exc:
            raise DeviceError(
                exc.errno, f"ifconfig {req.what}: {exc.strerror} (root needed?)"
            ) from exc

    try:
        for req in requests:
            run(req)
        flags = parse_flags(run(flags_get_request(ifname)))
        run(up_request(ifname, flags))
    finally:
        for sock in socks.values():
            sock.close()


class DarwinUtun(DeviceInfo):
    """A connected utun control socket, moving plain IP packets (the family word is
    handled here).  Closing it destroys the interface with its addresses and routes."""

    def __init__(self, sock: socket.socket, *, name: str, index: int = 0, mtu: int = 1500) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._name = name
        self._index = index
        self._mtu = mtu
        self._rx_hdr = bytearray(UTUN_HDR_LEN)
        #: Frames dropped on read / packets refused on write, by reason.
        self.errors: Counter[str] = Counter()

    def fileno(self) -> int:
        return self._fd

    def read_into(self, buf: memoryview) -> int:
        """Read one packet into ``buf`` (family word stripped). Frames that are shorter
        than the word or carry another family are counted in ``errors`` and skipped.

        Raises DeviceError(ENXIO) when the control socket reached end of file (0 bytes:
        every utun frame has its family word): the device is gone, like a deleted Linux
        TUN's EBADFD, an errno the pump stops on (pump.FATAL_ERRNOS), not a short frame
        to skip -- the socket stays readable, and the poll loop would spin."""
        hdr = self._rx_hdr
        for _ in range(READ_SKIP_LIMIT):
            n = os.readv(self._fd, (hdr, buf))
            if n > UTUN_HDR_LEN and hdr in _KNOWN_HDRS:
                return n - UTUN_HDR_LEN
            if n == 0:
                raise DeviceError(
                    errno.ENXIO, f"{self._name}: the utun control socket reached end of file"
                )
            self.errors["bad_family" if n > UTUN_HDR_LEN else "short_frame"] += 1
        raise BlockingIOError(errno.EAGAIN, "utun: too many bad frames in a row; poll again")

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Write one IP packet, its family word chosen by the version nibble."""
        hdr = _HDR_BY_VERSION.get(packet[0] >> 4) if len(packet) else None
        if hdr is None:
            self.errors["bad_version"] += 1
            raise DeviceError(errno.EAFNOSUPPORT, "utun: not an IPv4 or IPv6 packet")
        return os.writev(self._fd, (hdr, packet)) - UTUN_HDR_LEN

    # frame_header_len is 0: a frame as read is a plain packet, framed like any other.
    write_frame = write

    def close(self) -> None:
        if self._fd >= 0:
            self._sock.close()
            self._fd = -1


def open_utun(
    name: str = "",
    *,
    mtu: int = 1500,
    addresses: Iterable[IpInterface] = (),
) -> DarwinUtun:
    """Create ``utunN`` (or the next free utun for ``""``/``"utun"``), set its MTU and
    addresses and bring it up.  Needs macOS and root."""
    unit = utun_unit(name)
    addresses = list(addresses)
    if sys.platform != "darwin":
        raise DeviceError(errno.ENOTSUP, "utun devices exist only on macOS")
    import fcntl

    sock = socket.socket(PF_SYSTEM, socket.SOCK_DGRAM, SYSPROTO_CONTROL)
    try:
        try:
            ctl_id = parse_ctl_info(fcntl.ioctl(sock.fileno(), CTLIOCGINFO, ctl_info()))
        except OSError as exc:
            raise DeviceError(exc.errno, f"CTLIOCGINFO {UTUN_CONTROL_NAME}: {exc}") from exc
        try:
            sock.connect((ctl_id, unit))
        except OSError as exc:
            hint = {
                errno.EBUSY: f"{name} is in use: pick another or use tun://utun",
                errno.EPERM: "creating a utun needs root",
            }.get(exc.errno or 0, exc.strerror)
            raise DeviceError(exc.errno, f"utun connect (unit {unit}): {hint}") from exc
        raw = sock.getsockopt(SYSPROTO_CONTROL, UTUN_OPT_IFNAME, IFNAMSIZ)
        ifname = raw.split(b"\0", 1)[0].decode()
        index = socket.if_nametoindex(ifname)
        apply_requests(ifname, configure_requests(ifname, mtu, addresses))
    except BaseException:
        sock.close()
        raise
    return DarwinUtun(sock, name=ifname, index=index, mtu=mtu)
