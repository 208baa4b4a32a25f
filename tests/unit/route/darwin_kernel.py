"""A recording fake of the macOS routing socket and the table behind it, for the tests.

MOCK NOTICE: no macOS kernel here.  This fake decodes each message with its own reader
written from XNU's ``bsd/net/route.h`` (``struct rt_msghdr``), ``bsd/netinet/in.h``
(``struct sockaddr_in``), ``bsd/netinet6/in6.h`` (``struct sockaddr_in6``) and
``bsd/net/if_dl.h`` (``struct sockaddr_dl``) -- never with ztun's packers -- refuses a
malformed message as the kernel would (EINVAL), keeps a small routing table, and answers
RTM_GET with messages built the same independent way.

Host routes behave as in XNU: a route added with RTF_HOST goes into the radix tree
with no mask (``rtrequest_common_locked`` drops the netmask of an RTF_HOST request,
``bsd/net/route.c``), so an RTM_GET that carries a netmask -- even a full /32 or /128
one -- never finds it (``rn_lookup_args``, ``bsd/net/radix.c``, walks the duped keys for
a node whose mask *is* the one given; a host route's is NULL) and fails with ESRCH, and
a report about a host route carries RTF_HOST and no RTA_NETMASK (``route_output``
copies ``rt_mask(rt)``, NULL, into the reply, ``bsd/net/rtsock.c``).  The netmask of
any other route comes back as the radix tree keeps it (:func:`kernel_mask`: 0xff where
``sa_family`` would be).
"""

from __future__ import annotations

import errno
import ipaddress
from collections import deque
from dataclasses import dataclass

PID = 4242
EN0, LO0, UTUN = 4, 1, 9
GATEWAY = ipaddress.ip_address("192.168.1.1")

# -- bsd/net/route.h, written out (not imported from ztun) --------------------------------
RTM_VERSION = 5
RTM_ADD, RTM_DELETE, RTM_GET = 0x1, 0x2, 0x4
RTF_UP, RTF_GATEWAY, RTF_HOST, RTF_DONE, RTF_STATIC = 0x1, 0x2, 0x4, 0x40, 0x800
RTF_WASCLONED = 0x20000
RTA_DST, RTA_GATEWAY, RTA_NETMASK, RTA_IFP, RTA_IFA = 0x1, 0x2, 0x4, 0x10, 0x20
AF_INET, AF_LINK, AF_INET6 = 2, 18, 30  # bsd/sys/socket.h (Darwin numbers)
HDR_LEN = 92  # sizeof(struct rt_msghdr), LP64


def u16(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 2], "little")


def u32(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at : at + 4], "little")


@dataclass
class Header:
    """struct rt_msghdr, field by field at its offset."""

    msglen: int  # u_short rtm_msglen      @0
    version: int  # u_char rtm_version     @2
    type: int  # u_char rtm_type           @3
    index: int  # u_short rtm_index        @4   (2 bytes of padding @6 before the ints)
    flags: int  # int rtm_flags            @8
    addrs: int  # int rtm_addrs            @12
    pid: int  # pid_t rtm_pid              @16
    seq: int  # int rtm_seq                @20
    errno: int  # int rtm_errno            @24
    # int rtm_use @28, u_int32_t rtm_inits @32, struct rt_metrics rtm_rmx @36 (56 bytes)

    @classmethod
    def read(cls, raw: bytes) -> Header:
        return cls(
            u16(raw, 0), raw[2], raw[3], u16(raw, 4), u32(raw, 8), u32(raw, 12),
            u32(raw, 16), u32(raw, 20), u32(raw, 24),
        )  # fmt: skip

    def write(self) -> bytes:
        raw = bytearray(HDR_LEN)
        raw[0:2] = self.msglen.to_bytes(2, "little")
        raw[2], raw[3] = self.version, self.type
        raw[4:6] = self.index.to_bytes(2, "little")
        for at, value in ((8, self.flags), (12, self.addrs), (16, self.pid), (20, self.seq)):
            raw[at : at + 4] = value.to_bytes(4, "little")
        raw[24:28] = self.errno.to_bytes(4, "little")
        return bytes(raw)


def sa_in(addr: str) -> bytes:
    """struct sockaddr_in: sin_len @0 (16), sin_family @1, sin_port @2, sin_addr @4,
    sin_zero[8] @8."""
    return bytes([16, AF_INET]) + b"\0\0" + ipaddress.IPv4Address(addr).packed + bytes(8)


def sa_in6(addr: str, scope: int = 0) -> bytes:
    """struct sockaddr_in6: sin6_len @0 (28), sin6_family @1, sin6_port @2,
    sin6_flowinfo @4, sin6_addr @8, sin6_scope_id @24."""
    return (
        bytes([28, AF_INET6]) + bytes(6) + ipaddress.IPv6Address(addr).packed
        + scope.to_bytes(4, "little")
    )  # fmt: skip


def sa_dl(index: int, name: str = "") -> bytes:
    """struct sockaddr_dl: sdl_len @0, sdl_family @1, sdl_index @2, sdl_type @4,
    sdl_nlen @5, sdl_alen @6, sdl_slen @7, sdl_data[12] @8 (at least 20 bytes)."""
    data = name.encode().ljust(12, b"\0")
    return (
        bytes([8 + len(data), AF_LINK])
        + index.to_bytes(2, "little")
        + bytes([0, len(name), 0, 0])
        + data
    )


def mask4(prefixlen: int) -> bytes:
    """A netmask as route(8) sends it: the sockaddr_in trimmed after its last non-zero
    byte, sin_len saying how much is left (0 for /0).  (XNU answers with
    :func:`kernel_mask`.)"""
    if prefixlen == 0:
        return b""
    addr = (((1 << prefixlen) - 1) << (32 - prefixlen)).to_bytes(4, "big").rstrip(b"\0")
    return bytes([4 + len(addr), AF_INET, 0, 0]) + addr


def kernel_mask(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    """A netmask as XNU reports it in an RTM_GET answer: the mask the radix tree keeps
    (``rn_addmask``, ``bsd/net/radix.c``: the bytes between ``sa_len`` and the address
    -- 1..3 for AF_INET, 1..7 for AF_INET6 -- copied from ``rn_ones``, i.e. 0xff, so
    ``sa_family`` is 0xff, never AF_INET6) with trailing zeros trimmed (``sa_trim`` in
    ``rtm_scrub``, ``bsd/net/route.c``, which reads the mask by RTA_DST's family);
    empty (``sa_len`` 0) for /0."""
    skip = 4 if net.version == 4 else 8  # offsetof sin_addr / sin6_addr
    body = net.netmask.packed.rstrip(b"\0")
    if not body:
        return b""
    return bytes([skip + len(body)]) + b"\xff" * (skip - 1) + body


def roundup(sa: bytes) -> bytes:
    """ROUNDUP32 (bsd/net/rtsock.c): each sockaddr padded to 4 bytes, an empty one to 4."""
    return sa + bytes((-len(sa)) % 4 if sa else 4)


def message(header: Header, *sockaddrs: bytes) -> bytes:
    body = b"".join(roundup(sa) for sa in sockaddrs)
    header.msglen = HDR_LEN + len(body)
    return header.write() + body


def split_sockaddrs(raw: bytes, addrs: int) -> dict[int, bytes]:
    """The sockaddrs after the header, in RTA_* bit order; refuses bad padding."""
    out, at = {}, HDR_LEN
    for bit in range(8):
        if addrs & (1 << bit):
            length = raw[at]
            out[1 << bit] = raw[at : at + length]
            space = -(-length // 4) * 4 if length else 4
            if raw[at + length : at + space] != bytes(space - length):
                raise OSError(errno.EINVAL, f"non-zero padding after sockaddr {1 << bit:#x}")
            at += space
    if at != len(raw):
        raise OSError(errno.EINVAL, f"{len(raw) - at} bytes after the last sockaddr")
    return out


@dataclass
class Entry:
    ifindex: int
    ifname: str
    gateway: str | None = None  # None: an interface route (gateway is a sockaddr_dl)
    #: Added with RTF_HOST (no mask in the tree); None: so for a full-length prefix.
    host: bool | None = None
    #: A host route XNU cloned from a RTF_PRCLONING parent (here: the default route)
    #: for a destination the host talked to: RTF_WASCLONED, the parent's gateway.
    cloned: bool = False


def is_host(net: ipaddress.IPv4Network | ipaddress.IPv6Network, entry: Entry) -> bool:
    if entry.host is None:
        return net.prefixlen == net.max_prefixlen
    return entry.host


def _under(
    inner: ipaddress.IPv4Network | ipaddress.IPv6Network,
    outer: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def netmask_prefix(mask: bytes, family: int) -> int:
    if not mask:
        return 0
    width = 4 if family == AF_INET else 16
    body = mask[4:] if family == AF_INET else mask[8:]
    return bin(int.from_bytes(body.ljust(width, b"\0")[:width], "big")).count("1")


def address(sa: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if sa[1] == AF_INET:
        assert sa[0] == 16 and sa[2:4] == b"\0\0" and sa[8:16] == bytes(8), sa.hex()
        return ipaddress.IPv4Address(sa[4:8])
    assert sa[1] == AF_INET6 and sa[0] == 28 and sa[2:8] == bytes(6), sa.hex()
    return ipaddress.IPv6Address(sa[8:24])


class FakeRouteSocket:
    """A PF_ROUTE socket and the kernel's routing table behind it (see module doc)."""

    def __init__(self, table: dict[str, Entry], *, noise: bool = True) -> None:
        self.table = {ipaddress.ip_network(k): v for k, v in table.items()}
        self.written: list[bytes] = []
        self.replies: deque[bytes] = deque()
        self.noise = noise
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def read(self) -> bytes:
        if not self.replies:
            raise TimeoutError("timed out")
        return self.replies.popleft()

    def write(self, raw: bytes) -> int:
        self.written.append(bytes(raw))
        hdr = Header.read(raw)
        if hdr.msglen != len(raw) or hdr.version != RTM_VERSION:
            raise OSError(errno.EINVAL, "rtm_msglen/rtm_version")
        if raw[6:8] != b"\0\0" or raw[24:HDR_LEN] != bytes(HDR_LEN - 24):
            raise OSError(errno.EINVAL, "padding, errno, use, inits or metrics not zero")
        if hdr.pid != PID:
            raise OSError(errno.EINVAL, f"rtm_pid {hdr.pid}")
        sas = split_sockaddrs(raw, hdr.addrs)
        dst = address(sas[RTA_DST])
        family = sas[RTA_DST][1]
        if hdr.type == RTM_GET:
            return self._get(hdr, raw, sas, dst, family)
        if hdr.type not in (RTM_ADD, RTM_DELETE):
            raise OSError(errno.EOPNOTSUPP, f"rtm_type {hdr.type}")
        host = bool(hdr.flags & RTF_HOST)
        if host == (RTA_NETMASK in sas):
            raise OSError(errno.EINVAL, "RTF_HOST with a netmask, or a net without one")
        plen = dst.max_prefixlen if host else netmask_prefix(sas[RTA_NETMASK], family)
        net = ipaddress.ip_network((dst, plen))
        gw = sas[RTA_GATEWAY]
        if hdr.flags & RTF_GATEWAY:
            entry = Entry(hdr.index, "?", str(address(gw)))
        else:
            assert gw[1] == AF_LINK and u16(gw, 2) == hdr.index, gw.hex()
            entry = Entry(u16(gw, 2), "?")
        entry.host = host
        if hdr.type == RTM_ADD:
            assert hdr.flags & (RTF_UP | RTF_STATIC) == RTF_UP | RTF_STATIC
            # A clone in the way is deleted and the add retried ("Uh-oh, we already
            # have one of these", rtrequest_common_locked, bsd/net/route.c).
            if net in self.table and not self.table[net].cloned:
                raise OSError(errno.EEXIST, "File exists")
            entry.ifname = {EN0: "en0", LO0: "lo0", UTUN: "utun7"}[entry.ifindex]
            self.table[net] = entry
            if not host:  # rt_fixchange: the clones under it (of the default route) go
                for gone in [n for n, e in self.table.items() if e.cloned and _under(n, net)]:
                    del self.table[gone]
        else:  # rn_delete: the key with no mask (RTF_HOST) or with exactly this mask
            if net not in self.table or is_host(net, self.table[net]) != host:
                raise OSError(errno.ESRCH, "No such process")
            del self.table[net]
        return len(raw)

    def _get(self, hdr: Header, raw: bytes, sas: dict[int, bytes], dst, family: int) -> int:
        assert hdr.addrs & RTA_IFP and sas[RTA_IFP] == sa_dl(0), "RTA_IFP: empty sockaddr_dl"
        if RTA_NETMASK in sas:  # exact lookup: a node with this very mask (never a host's)
            net = ipaddress.ip_network((dst, netmask_prefix(sas[RTA_NETMASK], family)))
            found = net if net in self.table and not is_host(net, self.table[net]) else None
        else:  # best match
            matches = [n for n in self.table if n.version == dst.version and dst in n]
            found = max(matches, key=lambda n: n.prefixlen, default=None)
        if found is None:
            raise OSError(errno.ESRCH, "No such process")
        entry = self.table[found]
        if self.noise:  # another process's change, broadcast to every routing socket
            other = Header(0, RTM_VERSION, RTM_ADD, 2, 0, RTA_DST, 99, 1, 0)
            self.replies.append(message(other, sa_in("10.9.9.9")))
        host = is_host(found, entry)
        flags = RTF_UP | RTF_DONE | (RTF_GATEWAY if entry.gateway else 0)
        flags |= RTF_WASCLONED if entry.cloned else RTF_STATIC  # a clone loses RTF_STATIC
        flags |= RTF_HOST if host else 0
        gateway = sa_dl(entry.ifindex)
        if entry.gateway and ":" not in entry.gateway:
            gateway = sa_in(entry.gateway)
        elif entry.gateway:
            gw6 = ipaddress.IPv6Address(entry.gateway)
            embedded = gw6.packed[:2] + entry.ifindex.to_bytes(2, "big") + gw6.packed[4:]
            gateway = sa_in6(str(ipaddress.IPv6Address(embedded)))  # KAME form
        addrs = RTA_DST | RTA_GATEWAY | RTA_IFP
        mask = kernel_mask(found)
        sockaddrs = [
            sa_in(str(found.network_address))
            if family == AF_INET
            else sa_in6(str(found.network_address)),
            gateway,
        ]
        if not host:  # rt_mask(rt) is NULL for a host route: no RTA_NETMASK at all
            addrs |= RTA_NETMASK
            sockaddrs.append(mask)
        reply = message(
            Header(0, RTM_VERSION, RTM_GET, entry.ifindex, flags, addrs, hdr.pid, hdr.seq, 0),
            *sockaddrs,
            sa_dl(entry.ifindex, entry.ifname),
        )
        self.replies.append(reply)
        return len(raw)


def home_table() -> dict[str, Entry]:
    return {
        "0.0.0.0/0": Entry(EN0, "en0", str(GATEWAY)),
        "192.168.1.0/24": Entry(EN0, "en0"),
        "127.0.0.0/8": Entry(LO0, "lo0"),
        "172.19.0.2/32": Entry(UTUN, "utun7"),  # the p2p destination of the utun
        "::/0": Entry(EN0, "en0", "fe80::1"),
    }
