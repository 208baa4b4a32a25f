"""macOS auto-route through a PF_ROUTE socket, every message built and parsed as bytes.

MOCK NOTICE: the routing socket exists only on macOS (:class:`PfRouteSocket` refuses
elsewhere).  Everything written to it and read from it goes through pure functions here
(:func:`route_message`, :func:`get_message`, :func:`parse_message`), and the applier
(:class:`DarwinRoutes`) takes the socket as an argument, so the tests drive it through a
recording fake that checks every byte against the XNU layouts; the hosted macOS CI row
runs it against the real kernel.

Layouts (XNU ``bsd/net/route.h``, ``bsd/netinet/in.h``, ``bsd/netinet6/in6.h``,
``bsd/net/if_dl.h``), all in host byte order (little-endian on x86_64 and arm64) except
ports and addresses, which are network order::

    struct rt_metrics  (56 bytes)  u_int32 rmx_locks, rmx_mtu, rmx_hopcount; int32
                                   rmx_expire; u_int32 rmx_recvpipe, rmx_sendpipe,
                                   rmx_ssthresh, rmx_rtt, rmx_rttvar, rmx_pksent,
                                   rmx_state, rmx_filler[3]: 14 words
    struct rt_msghdr   (92 bytes)  u_short msglen; u_char version, type; u_short index;
                                   (2 pad) int flags, addrs; pid_t pid; int seq, errno,
                                   use; u_int32 inits; struct rt_metrics rmx
    sockaddr_in  16: len, family, port, addr[4], zero[8]
    sockaddr_in6 28: len, family, port, flowinfo, addr[16], scope_id
    sockaddr_dl  20: len, family, u_short index, type, nlen, alen, slen, data[12]

After the header come the sockaddrs named by ``rtm_addrs``, in RTA_* bit order, each padded
to a 4-byte boundary by XNU's ``ROUNDUP32`` (``bsd/net/rtsock.c``), a zero-length one
taking 4 bytes.  An IPv4 netmask is sent trimmed after its last non-zero byte, as
``route(8)`` does.

Auto-route on macOS (as sing-tun and OpenVPN's def1): two half-default routes 0/1 and
128/1 (``::/1`` and ``8000::/1``) into the utun -- or one route per ``--include`` -- win
over the default route without replacing it.  Each exclude and proxy address that a
tunnel route would capture keeps the route that carries it now (found with RTM_GET
before anything changes: usually the original default gateway on the physical
interface), as a route of its own that is more specific than the tunnel's.  Addresses
already more specific (loopback, the LAN) need nothing.  Routes go in from the harmless
end (excludes) to the one that moves traffic, each journaled first (the Linux journal
format: :class:`ztun.route.model.SystemRoute` records), and restore deletes only a
route that still matches its journal entry (RTM_GET on the exact prefix first).

The gateway of a tunnel route is a ``sockaddr_dl`` naming the utun by index, with no
RTF_GATEWAY: an interface route, as ``route add -interface utunN`` makes (route(8)
sends the interface's link address).  XNU finds the interface of such a gateway in
``ifa_ifwithnet``, which looks AF_LINK addresses up by ``sdl_index`` alone (BSD's
"AF_LINK addresses can be looked up directly by their index number").

IPv6 link-local gateways (``fe80::1%en0``) travel in the KAME form: the scope (the
interface index) embedded in bytes 2-3 of the address and ``sin6_scope_id`` 0, as
``route(8)`` writes them and as the kernel reports them.

``--dns`` (:class:`DarwinDns`) journals its resolver changes (made by
:class:`ztun.route.scutil.ScutilResolver`) in the device's journal, after the routes, and
makes them through the same :class:`DarwinChanger`, so a route restore undoes them too.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ztun.route.journaled import Changer, append_changes, recover_changes, restore_changes
from ztun.route.model import (
    JournalChange,
    ResolverChange,
    RestoreReport,
    RouteError,
    SystemRoute,
)
from ztun.route.scutil import ScutilResolver
from ztun.route.system import CurrentRoute, plan_system_routes

if TYPE_CHECKING:
    from ztun.route.journal import Journal
    from ztun.route.plan import AutoRouteConfig

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RTM_VERSION = 5
RTM_ADD = 0x1
RTM_DELETE = 0x2
RTM_GET = 0x4
RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_HOST = 0x4
RTF_STATIC = 0x800
RTF_WASCLONED = 0x20000
RTF_IFSCOPE = 0x1000000
RTA_DST = 0x1
RTA_GATEWAY = 0x2
RTA_NETMASK = 0x4
RTA_GENMASK = 0x8
RTA_IFP = 0x10
RTA_IFA = 0x20
RTAX_MAX = 8  # RTA_DST .. RTA_BRD: the sockaddrs a message can carry, in bit order
DARWIN_AF_INET = 2
DARWIN_AF_INET6 = 30
DARWIN_AF_LINK = 18
DARWIN_AF_ROUTE = 17

RT_METRICS = struct.Struct("<IIIiIIIIII4I")
RT_MSGHDR = struct.Struct("<HBBH2xiiiiiiI" + RT_METRICS.format.removeprefix("<"))
SOCKADDR_IN = struct.Struct("<BBH4s8x")
SOCKADDR_IN6 = struct.Struct("<BBHI16sI")
SOCKADDR_DL = struct.Struct("<BBHBBBB12s")
_ALIGN = 4  # sizeof(uint32_t) in ROUNDUP32
#: Messages read while waiting for one RTM_GET answer: every routing socket gets a copy
#: of every routing change on the host, so others' messages are skipped, boundedly.
MAX_SKIPPED_MESSAGES = 1024
READ_TIMEOUT = 2.0  # seconds the kernel has to answer an RTM_GET (it answers at once)
RECV_SIZE = 2048  # an RTM_GET answer is 92 bytes + at most 8 sockaddrs


def roundup32(length: int) -> int:
    """XNU's ROUNDUP32: the space a sockaddr of ``length`` takes in a message."""
    return 1 + ((length - 1) | (_ALIGN - 1)) if length > 0 else _ALIGN


def sockaddr_in(addr: ipaddress.IPv4Address, port: int = 0) -> bytes:
    return SOCKADDR_IN.pack(SOCKADDR_IN.size, DARWIN_AF_INET, socket.htons(port), addr.packed)


def sockaddr_in6(addr: ipaddress.IPv6Address, port: int = 0, scope_id: int = 0) -> bytes:
    return SOCKADDR_IN6.pack(
        SOCKADDR_IN6.size, DARWIN_AF_INET6, socket.htons(port), 0, addr.packed, scope_id
    )


def sockaddr_dl(ifindex: int) -> bytes:
    """A link-level address naming an interface by index (the gateway of an interface route)."""
    return SOCKADDR_DL.pack(SOCKADDR_DL.size, DARWIN_AF_LINK, ifindex, 0, 0, 0, 0, b"")


def _needs_scope(addr: ipaddress.IPv6Address) -> bool:
    """Link-local unicast and interface/link-local multicast: KAME embeds their scope."""
    return addr.is_link_local or (addr.is_multicast and addr.packed[1] & 0x0F in (1, 2))


def gateway_sockaddr(addr: IPAddress, ifindex: int) -> bytes:
    """A gateway as route(8) writes it: IPv6 link-local in the KAME form, the interface
    index in bytes 2-3 of the address (network order) and ``sin6_scope_id`` 0."""
    if isinstance(addr, ipaddress.IPv4Address):
        return sockaddr_in(addr)
    raw = addr.packed
    if _needs_scope(addr):
        raw = raw[:2] + ifindex.to_bytes(2, "big") + raw[4:]
    return sockaddr_in6(ipaddress.IPv6Address(raw))


def netmask(net: IPNetwork) -> bytes:
    """The netmask sockaddr: IPv4 trimmed after its last non-zero byte (sin_len shrinks)."""
    if isinstance(net, ipaddress.IPv4Network):
        full = sockaddr_in(net.netmask)
        used = len(full.rstrip(b"\x00"))
        if used <= 4:  # /0: nothing but len/family/port
            return b""
        return bytes([used]) + full[1:used]
    return sockaddr_in6(net.netmask)


def _padded(sa: bytes) -> bytes:
    return sa + bytes(roundup32(len(sa)) - len(sa))


@dataclass(frozen=True, slots=True)
class DarwinRoute:
    """A route: ``dst`` via ``gateway``, or out of interface ``ifindex`` when no gateway.

    ``ifscope`` sets RTF_IFSCOPE: the route applies only to traffic scoped to ``ifindex``
    (sockets bound with IP_BOUND_IF), as macOS uses for per-interface default routes.
    """

    dst: IPNetwork
    ifindex: int
    gateway: IPAddress | None = None
    ifscope: bool = False

    @property
    def flags(self) -> int:
        flags = RTF_UP | RTF_STATIC
        if self.gateway is not None:
            flags |= RTF_GATEWAY
        if self.dst.prefixlen == self.dst.max_prefixlen:
            flags |= RTF_HOST
        if self.ifscope:
            flags |= RTF_IFSCOPE
        return flags

    @classmethod
    def of(cls, change: SystemRoute) -> DarwinRoute:
        gateway = ipaddress.ip_address(change.gateway) if change.gateway is not None else None
        return cls(ipaddress.ip_network(change.dst), change.ifindex, gateway)


def _sockaddr(addr: IPAddress) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address):
        return sockaddr_in(addr)
    return sockaddr_in6(addr)


def _header(
    rtm_type: int, length: int, *, index: int, flags: int, addrs: int, seq: int, pid: int
) -> bytes:
    return RT_MSGHDR.pack(
        length,
        RTM_VERSION,
        rtm_type,
        index,
        flags,
        addrs,
        pid,
        seq,
        0,  # errno
        0,  # use
        0,  # inits: no metrics are set
        *([0] * 14),  # struct rt_metrics rmx: its 14 words (rmx_locks .. rmx_filler[2])
    )


def route_message(rtm_type: int, route: DarwinRoute, *, seq: int, pid: int = 0) -> bytes:
    """One ``rt_msghdr`` + sockaddrs message for RTM_ADD / RTM_DELETE."""
    addrs = RTA_DST | RTA_GATEWAY
    payload = _padded(_sockaddr(route.dst.network_address))
    payload += _padded(
        gateway_sockaddr(route.gateway, route.ifindex)
        if route.gateway is not None
        else sockaddr_dl(route.ifindex)
    )
    if not route.flags & RTF_HOST:
        addrs |= RTA_NETMASK
        payload += _padded(netmask(route.dst))
    header = _header(
        rtm_type,
        RT_MSGHDR.size + len(payload),
        index=route.ifindex,
        flags=route.flags,
        addrs=addrs,
        seq=seq,
        pid=pid,
    )
    return header + payload


def get_message(dst: IPAddress | IPNetwork, *, seq: int, pid: int) -> bytes:
    """RTM_GET: an address asks for its best-matching route (``route -n get ADDR``); a
    network asks for exactly that prefix (``route -n get -net NET``).  Both ask for
    RTA_IFP with an empty ``sockaddr_dl``, so the answer names the interface, as
    route(8) does.

    A full-length prefix (/32, /128) is asked for as an address, with no netmask: a
    host route lives in XNU's radix tree with no mask (RTF_HOST drops it, ``route.c``),
    and ``rn_lookup_args`` (``bsd/net/radix.c``) given a mask only returns a node whose
    mask is that one -- never a host route -- so a full mask would answer ESRCH for the
    very route ztun added.  The caller checks RTF_HOST in the answer
    (:meth:`RouteTable.get`)."""
    addrs = RTA_DST | RTA_IFP
    if isinstance(dst, ipaddress.IPv4Network | ipaddress.IPv6Network) and (
        dst.prefixlen == dst.max_prefixlen
    ):
        dst = dst.network_address
    if isinstance(dst, ipaddress.IPv4Network | ipaddress.IPv6Network):
        payload = _padded(_sockaddr(dst.network_address))
        payload += _padded(netmask(dst))
        addrs |= RTA_NETMASK
    else:
        payload = _padded(_sockaddr(dst))
    payload += _padded(sockaddr_dl(0))
    header = _header(
        RTM_GET, RT_MSGHDR.size + len(payload), index=0, flags=RTF_UP, addrs=addrs, seq=seq, pid=pid
    )
    return header + payload


# -- reading what the kernel says -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkAddress:
    """A ``sockaddr_dl``: an interface by index, with its name when the kernel gives it."""

    index: int
    name: str


Sockaddr = IPAddress | LinkAddress | bytes  # bytes: a netmask (no family of its own)


def parse_sockaddr(
    raw: bytes, *, is_mask: bool = False, mask_family: int | None = None
) -> Sockaddr | None:
    """One sockaddr of a message: an address (KAME scope removed), a link address, or
    for a netmask its address bytes.  None for an empty one (``sa_len`` 0).

    A netmask's own ``sa_family`` cannot be trusted: XNU stores masks as
    ``rn_addmask`` (``bsd/net/radix.c``) makes them, every byte between ``sa_len`` and
    the address filled with ones, so an RTM_GET answer carries an IPv6 mask with
    family 0xff.  ``rtm_scrub`` (``bsd/net/route.c``) reads it by the family of the
    message's RTA_DST instead, and so does this: ``mask_family`` is that family."""
    if not raw or raw[0] == 0:
        return b"" if is_mask else None
    length, family = raw[0], raw[1]
    if is_mask:
        offset = 8 if (mask_family or family) == DARWIN_AF_INET6 else 4
        return raw[offset:length]
    if family == DARWIN_AF_INET and length >= 8:
        return ipaddress.IPv4Address(raw[4:8])
    if family == DARWIN_AF_INET6 and length >= 24:
        addr = bytearray(raw[8:24])
        if _needs_scope(ipaddress.IPv6Address(bytes(addr))):
            addr[2:4] = b"\0\0"
        return ipaddress.IPv6Address(bytes(addr))
    if family == DARWIN_AF_LINK and length >= 8:
        index, nlen = struct.unpack_from("<H", raw, 2)[0], raw[5]
        return LinkAddress(index, raw[8 : 8 + nlen].decode(errors="replace"))
    return None


@dataclass(frozen=True, slots=True)
class RouteReply:
    """A routing message from the kernel (the fields ztun reads)."""

    type: int
    index: int
    flags: int
    pid: int
    seq: int
    errno: int
    sockaddrs: dict[int, Sockaddr | None]

    @property
    def dst(self) -> IPAddress | None:
        dst = self.sockaddrs.get(RTA_DST)
        return dst if isinstance(dst, ipaddress.IPv4Address | ipaddress.IPv6Address) else None

    @property
    def gateway(self) -> IPAddress | None:
        """The next hop of a gateway route (None for an interface route)."""
        gw = self.sockaddrs.get(RTA_GATEWAY)
        if self.flags & RTF_GATEWAY and isinstance(
            gw, ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            return gw
        return None

    @property
    def interface(self) -> LinkAddress | None:
        ifp = self.sockaddrs.get(RTA_IFP)
        return ifp if isinstance(ifp, LinkAddress) else None

    @property
    def prefixlen(self) -> int | None:
        """The route's prefix length (from RTF_HOST or the netmask)."""
        dst = self.dst
        if dst is None:
            return None
        if self.flags & RTF_HOST or RTA_NETMASK not in self.sockaddrs:
            return dst.max_prefixlen
        mask = self.sockaddrs[RTA_NETMASK]
        assert isinstance(mask, bytes)
        width = dst.max_prefixlen // 8
        bits = int.from_bytes(mask[:width].ljust(width, b"\0"), "big")
        return bin(bits).count("1")

    @property
    def network(self) -> IPNetwork | None:
        dst, plen = self.dst, self.prefixlen
        if dst is None or plen is None:
            return None
        return ipaddress.ip_network((dst, plen), strict=False)


def parse_message(raw: bytes) -> RouteReply:
    """An ``rt_msghdr`` and the sockaddrs its ``rtm_addrs`` names; ValueError if short."""
    if len(raw) < RT_MSGHDR.size:
        raise ValueError(f"routing message of {len(raw)} bytes (the header alone is 92)")
    fields = RT_MSGHDR.unpack_from(raw)
    msglen, version, rtm_type, index, flags, addrs, pid, seq, err = fields[:9]
    if version != RTM_VERSION or msglen > len(raw):
        raise ValueError(f"routing message version {version}, length {msglen}/{len(raw)}")
    sockaddrs: dict[int, Sockaddr | None] = {}
    offset = RT_MSGHDR.size
    dst_family: int | None = None  # RTA_DST comes first (bit order): the masks' family
    for bit in range(RTAX_MAX):
        flag = 1 << bit
        if not addrs & flag:
            continue
        length = raw[offset] if offset < msglen else 0
        if flag == RTA_DST and length >= 2:
            dst_family = raw[offset + 1]
        sockaddrs[flag] = parse_sockaddr(
            raw[offset : offset + max(length, 2)],
            is_mask=flag in (RTA_NETMASK, RTA_GENMASK),
            mask_family=dst_family,
        )
        offset += roundup32(length)
    return RouteReply(rtm_type, index, flags, pid, seq, err, sockaddrs)


# -- the socket --------------------------------------------------------------------------


class RouteSocket(Protocol):
    """A PF_ROUTE socket: one message per write and per read."""

    def write(self, message: bytes) -> int: ...

    def read(self) -> bytes: ...

    def close(self) -> None: ...


def _require_macos(what: str) -> None:
    if sys.platform != "darwin":
        raise OSError(errno.EAFNOSUPPORT, f"{what} exist only on macOS")


class PfRouteSocket:  # pragma: no cover - macOS only (the hosted CI row runs it)
    """``socket(PF_ROUTE, SOCK_RAW, 0)``: the kernel fails a bad write with its errno
    (EEXIST, ESRCH, ...), and answers an RTM_GET with a message read back here."""

    def __init__(self) -> None:
        _require_macos("PF_ROUTE sockets")
        self._sock = socket.socket(DARWIN_AF_ROUTE, socket.SOCK_RAW, 0)
        self._sock.settimeout(READ_TIMEOUT)

    def write(self, message: bytes) -> int:
        return self._sock.send(message)

    def read(self) -> bytes:
        return self._sock.recv(RECV_SIZE)

    def close(self) -> None:
        self._sock.close()


class RouteTable:
    """Route requests over one routing socket, with sequence numbers and errors mapped."""

    def __init__(self, sock: RouteSocket, *, pid: int) -> None:
        self._sock = sock
        self._pid = pid
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def get(self, dst: IPAddress | IPNetwork) -> RouteReply | None:
        """The route for ``dst`` (best match for an address, exact for a network);
        None when there is none (ESRCH).  A full-length network is asked for as its
        address (see :func:`get_message`): only a host route for exactly it is an
        answer, not the broader route that carries it."""
        reply = self._get(dst)
        if reply is None or isinstance(dst, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return reply
        if dst.prefixlen == dst.max_prefixlen:
            exact = bool(reply.flags & RTF_HOST) and reply.dst == dst.network_address
        else:
            exact = reply.network == dst
        return reply if exact else None

    def _get(self, dst: IPAddress | IPNetwork) -> RouteReply | None:
        seq = self._next_seq()
        try:
            self._sock.write(get_message(dst, seq=seq, pid=self._pid))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return None
            raise RouteError(f"route get {dst}: {exc.strerror} (errno {exc.errno})") from exc
        for _ in range(MAX_SKIPPED_MESSAGES):
            try:
                raw = self._sock.read()
            except TimeoutError as exc:
                raise RouteError(f"route get {dst}: no answer from the kernel") from exc
            try:
                reply = parse_message(raw)
            except ValueError:
                continue  # not ours to judge: another listener's message
            if reply.type == RTM_GET and reply.pid == self._pid and reply.seq == seq:
                if reply.errno == errno.ESRCH:
                    return None
                if reply.errno:
                    raise RouteError(f"route get {dst}: {os.strerror(reply.errno)}")
                return reply
        raise RouteError(f"route get {dst}: no answer among {MAX_SKIPPED_MESSAGES} messages")

    def change(self, rtm_type: int, route: DarwinRoute) -> None:
        """RTM_ADD / RTM_DELETE; OSError (EEXIST, ESRCH, ...) as the kernel failed it."""
        self._sock.write(route_message(rtm_type, route, seq=self._next_seq(), pid=self._pid))


# -- planning ----------------------------------------------------------------------------


def current_route(reply: RouteReply | None) -> CurrentRoute | None:
    """An RTM_GET answer as the planner's view of the route that carries an address.

    A host route XNU cloned from a gateway route (RTF_WASCLONED: every IPv4 and IPv6 net
    route is RTF_PRCLONING, ``in_rmx.c``/``in6_rmx.c``, and a TCP connection clones one
    per destination) is not a route of its own: adding a more specific net route deletes
    the clones under it (``rt_fixchange``, ``bsd/net/route.c``).  Its /32 (/128) says
    nothing about its parent, whose length the answer does not carry, so it counts as
    the least specific route (prefix 0): the address keeps the clone's gateway and
    interface through a route of its own -- at worst one more specific than needed."""
    if reply is None or reply.prefixlen is None:
        return None
    interface = reply.interface
    if interface is None:
        raise RouteError(f"route get {reply.dst}: the kernel named no interface (RTA_IFP)")
    cloned = reply.flags & (RTF_WASCLONED | RTF_GATEWAY) == RTF_WASCLONED | RTF_GATEWAY
    return CurrentRoute(
        prefixlen=0 if cloned else reply.prefixlen,
        device=interface.name,
        ifindex=reply.index or interface.index,
        gateway=reply.gateway,
    )


# -- applying ----------------------------------------------------------------------------

OpenSocket = Callable[[], RouteSocket]


class DarwinChanger:
    """Makes and unmakes journaled changes on macOS: routes over the routing socket
    (opened on demand), resolver settings through :mod:`ztun.route.scutil`."""

    def __init__(
        self,
        open_socket: OpenSocket = PfRouteSocket,
        *,
        pid: int | None = None,
        resolver: Changer | None = None,
    ) -> None:
        self._open_socket = open_socket
        self._pid = os.getpid() if pid is None else pid
        self._table: RouteTable | None = None
        self._sock: RouteSocket | None = None
        self.resolver = resolver if resolver is not None else ScutilResolver()

    @property
    def table(self) -> RouteTable:
        if self._table is None:
            self._sock = self._open_socket()
            self._table = RouteTable(self._sock, pid=self._pid)
        return self._table

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock, self._table = None, None

    def add(self, change: JournalChange) -> bool:
        if isinstance(change, ResolverChange):
            return self.resolver.add(change)
        route = self._route(change)
        try:
            self.table.change(RTM_ADD, route)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise RouteError(f"{change.describe()}: {exc.strerror} (errno {exc.errno})") from exc
        return True

    def remove(self, change: JournalChange) -> bool:
        if isinstance(change, ResolverChange):
            return self.resolver.remove(change)
        route = self._route(change)
        assert isinstance(change, SystemRoute)
        now = self.table.get(route.dst)
        if now is None or not _is_journaled_route(now, change):
            return False  # gone (a utun's routes die with it), or no longer ours
        try:
            self.table.change(RTM_DELETE, route)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            raise RouteError(
                f"undo {change.describe()}: {exc.strerror} (errno {exc.errno})"
            ) from exc
        return True

    @staticmethod
    def _route(change: JournalChange) -> DarwinRoute:
        if not isinstance(change, SystemRoute):
            raise RouteError(f"{change.describe()}: not a macOS change (another OS's journal)")
        return DarwinRoute.of(change)


def _is_journaled_route(now: RouteReply, change: SystemRoute) -> bool:
    """Whether the kernel's route for the prefix is the one the journal made: same
    interface (index and, when the kernel names it, name) and same gateway."""
    if now.index != change.ifindex:
        return False
    if now.interface is not None and now.interface.name and now.interface.name != change.device:
        return False
    want = ipaddress.ip_address(change.gateway) if change.gateway is not None else None
    return now.gateway == want


class DarwinRoutes:
    """The macOS auto-route applier (`Platform.routes`): plan with RTM_GET, journal,
    apply; restore from the journal (resolver entries included)."""

    def __init__(
        self,
        journal: Journal,
        *,
        changer: DarwinChanger | None = None,
        ifindex: Callable[[str], int] = socket.if_nametoindex,
    ) -> None:
        self.journal = journal
        self.changer = changer if changer is not None else DarwinChanger()
        self._ifindex = ifindex

    def plan(self, cfg: AutoRouteConfig) -> list[SystemRoute]:
        table = self.changer.table
        return plan_system_routes(
            cfg, self._ifindex(cfg.device), lambda addr: current_route(table.get(addr))
        )

    def apply(self, cfg: AutoRouteConfig) -> int:
        try:
            changes: Sequence[SystemRoute] = self.plan(cfg)
            append_changes(changes, self.journal, cfg.device, self.changer)
        finally:
            self.changer.close()
        for change in changes:
            log.info("auto-route: %s", change.describe())
        return len(changes)

    def restore(self) -> RestoreReport:
        try:
            return restore_changes(self.journal, self.changer)
        finally:
            self.changer.close()

    def recover(self) -> RestoreReport | None:
        try:
            return recover_changes(self.journal, self.changer)
        finally:
            self.changer.close()


class DarwinDns:
    """The macOS `--dns` applier (`Platform.dns`): the primary service's resolver set to
    ``servers`` through scutil, journaled in the device's journal after its routes.

    It makes its changes through a whole :class:`DarwinChanger`, not the resolver alone:
    a failed apply rolls back everything the journal lists, the routes included."""

    def __init__(
        self, journal: Journal, device: str, *, resolver: ScutilResolver | None = None
    ) -> None:
        self.journal = journal
        self.device = device
        self.resolver = resolver if resolver is not None else ScutilResolver()
        self.changer = DarwinChanger(resolver=self.resolver)

    def apply(self, servers: Sequence[IPAddress]) -> None:
        try:
            append_changes(self.resolver.plan(servers), self.journal, self.device, self.changer)
        finally:
            self.changer.close()

    def restore(self) -> None:
        """Undo the journal's resolver entries (idempotent); its routes are the route
        applier's, whose restore runs next and removes the file."""
        if self.journal.exists():
            restore_changes(self.journal, self.changer, only=ResolverChange)
