"""macOS auto-route as PF_ROUTE messages, built as bytes (layouts from XNU's headers).

MOCK NOTICE: this module only *builds* routing-socket messages here; sending them
(:func:`send_route_messages`) needs a macOS kernel and refuses to run elsewhere.  The
byte layouts are tested against the header definitions, so the VM rows can use them as is.

Layouts (XNU ``bsd/net/route.h``, ``bsd/netinet/in.h``, ``bsd/netinet6/in6.h``,
``bsd/net/if_dl.h``), all in host byte order (little-endian on x86_64 and arm64) except
ports and addresses, which are network order::

    struct rt_metrics  (56 bytes)  10 x u_int32/int32 + rmx_filler[4]
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
128/1 (``::/1`` and ``8000::/1``) into the utun win over the default route without
replacing it, and the proxy's address gets a host route via the original gateway.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

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
RTF_IFSCOPE = 0x1000000
RTA_DST = 0x1
RTA_GATEWAY = 0x2
RTA_NETMASK = 0x4
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


def _sockaddr(addr: IPAddress) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address):
        return sockaddr_in(addr)
    return sockaddr_in6(addr)


def route_message(rtm_type: int, route: DarwinRoute, *, seq: int, pid: int = 0) -> bytes:
    """One ``rt_msghdr`` + sockaddrs message for RTM_ADD / RTM_DELETE / RTM_GET."""
    addrs = RTA_DST | RTA_GATEWAY
    payload = _padded(_sockaddr(route.dst.network_address))
    payload += _padded(
        _sockaddr(route.gateway) if route.gateway is not None else sockaddr_dl(route.ifindex)
    )
    if not route.flags & RTF_HOST:
        addrs |= RTA_NETMASK
        payload += _padded(netmask(route.dst))
    header = RT_MSGHDR.pack(
        RT_MSGHDR.size + len(payload),
        RTM_VERSION,
        rtm_type,
        route.ifindex,
        route.flags,
        addrs,
        pid,
        seq,
        0,  # errno
        0,  # use
        0,  # inits
        *([0] * 14),  # rt_metrics
    )
    return header + payload


def plan_darwin_routes(
    tun_ifindex: int,
    families: Iterable[int],
    *,
    proxy_routes: Iterable[tuple[IPAddress, IPAddress, int]] = (),
) -> list[DarwinRoute]:
    """Half-default routes into the utun per family, plus a host route per proxy address
    as (proxy, original gateway, physical ifindex) so the proxy never loops."""
    halves: dict[int, tuple[str, str]] = {
        socket.AF_INET: ("0.0.0.0/1", "128.0.0.0/1"),
        socket.AF_INET6: ("::/1", "8000::/1"),
    }
    out = [
        DarwinRoute(ipaddress.ip_network(proxy), ifindex, gateway)
        for proxy, gateway, ifindex in proxy_routes
    ]
    for fam in families:
        out += [DarwinRoute(ipaddress.ip_network(n), tun_ifindex) for n in halves[fam]]
    return out


def send_route_messages(messages: Iterable[bytes]) -> None:  # pragma: no cover - macOS only
    """Write messages to a PF_ROUTE socket; the kernel rejects a bad one by failing the
    write with its errno (EEXIST, ESRCH, ...), which surfaces here as OSError."""
    if sys.platform != "darwin":
        raise OSError("PF_ROUTE messages can only be sent on macOS")
    with socket.socket(DARWIN_AF_ROUTE, socket.SOCK_RAW, 0) as sock:
        for msg in messages:
            sock.send(msg)
