"""Crafted packets (scapy) for the path under test, and ways to inject them.

Every builder takes a ``random.Random`` first: source ports, ISNs, IP IDs, ICMP idents and
garbage come from it, so a failing test replays bit for bit from its seed (the plugin
derives the generator from ``--seed`` and the test's node id). The IP version follows
the address type, so one test body covers IPv4 and IPv6.

Builders return scapy packets with checksums left for scapy to fill (correct), except
the deliberately broken ones, which return packets whose wrong field is pinned, or raw
``bytes`` when the result is not a parseable packet at all (truncated, garbage).

Injection:

* :func:`send_raw` -- from inside a Host: routed by the host's kernel through a raw IP
  socket (``iface=None``: the path an application's packet takes, e.g. into the TUN), or
  put on a given interface through a packet socket (``iface="tun0"``: bypasses routing and
  the kernel's header fix-ups, the only way to deliver a bad IPv4 header checksum).
* :func:`write_to_tun` -- write straight into a TUN file descriptor, as the OS would hand
  a packet to a tun2socks that reads the other end.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
from collections.abc import Sequence
from typing import Any, Literal

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
    RouterAlert,
)
from scapy.packet import Packet, Raw

from harness.hosts import Host
from harness.peers.starters import host_python

Addr = str | ipaddress.IPv4Address | ipaddress.IPv6Address

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
EPHEMERAL_PORTS = (32768, 60999)  # Linux ip_local_port_range default
DEFAULT_TTL = 64
DEFAULT_WINDOW = 65535
DEFAULT_MSS = 1460
DEFAULT_WSCALE = 7
IPV4_HEADER = 20
IPV6_HEADER = 40
FRAGMENT_UNIT = 8  # fragment offsets count 8-byte units (RFC 791, RFC 8200)
IPV6_FRAGMENT_HEADER = 8
ICMPV4_QUOTE_LIMIT = 576  # RFC 1812 4.3.2.3: quote as much as fits in 576 bytes
ICMPV6_QUOTE_LIMIT = 1280  # RFC 4443 2.4(c): as much as fits the minimum MTU
ICMP_HEADER = 8
PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6 = 6, 17, 1, 58
ROUTER_ALERT: list[IPOption] = [IPOption_Router_Alert()]
"""IPv4 options every router must look at (RFC 2113): the classic "IP options" probe."""

IcmpErrorKind = Literal["unreachable", "port-unreachable", "time-exceeded", "frag-needed"]


# --------------------------------------------------------------------------- addressing


def ip_address(addr: Addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return addr if not isinstance(addr, str) else ipaddress.ip_address(addr)


def is_v6(addr: Addr) -> bool:
    return ip_address(addr).version == 6


def ephemeral_port(rng: random.Random) -> int:
    return rng.randint(*EPHEMERAL_PORTS)


def ip_layer(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    *,
    ttl: int = DEFAULT_TTL,
    df: bool = False,
    ip_options: Sequence[IPOption] | None = None,
    tos: int = 0,
) -> Packet:
    """IPv4 (random ID) or IPv6 (hop limit = ``ttl``) header for ``src`` -> ``dst``."""
    s, d = ip_address(src), ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"source {s} and destination {d} are different IP versions")
    if s.version == 6:
        if ip_options:
            raise ValueError("IPv6 has no header options; use with_hop_by_hop()")
        return IPv6(src=str(s), dst=str(d), hlim=ttl, tc=tos)
    return IP(
        src=str(s),
        dst=str(d),
        ttl=ttl,
        tos=tos,
        id=rng.randrange(0x10000),
        flags="DF" if df else 0,
        options=list(ip_options or []),
    )


# --------------------------------------------------------------------------- TCP / UDP / ICMP


def tcp_options(
    rng: random.Random,
    *,
    mss: int | None = DEFAULT_MSS,
    wscale: int | None = DEFAULT_WSCALE,
    sack_permitted: bool = True,
    timestamps: bool | tuple[int, int] = True,
    sack_blocks: Sequence[tuple[int, int]] = (),
) -> list[tuple[str, Any]]:
    """TCP options in the order Linux sends them on a SYN (MSS, SACK-OK, TS, NOP, WS).

    ``timestamps=True`` draws TSval from ``rng`` (TSecr 0); a tuple gives both.
    """
    opts: list[tuple[str, Any]] = []
    if mss is not None:
        opts.append(("MSS", mss))
    if sack_permitted:
        opts.append(("SAckOK", b""))
    if timestamps:
        ts = timestamps if isinstance(timestamps, tuple) else (rng.getrandbits(32), 0)
        opts.append(("Timestamp", ts))
    if sack_blocks:
        opts.append(("NOP", None))
        opts.append(("NOP", None))
        opts.append(("SAck", tuple(edge for block in sack_blocks for edge in block)))
    if wscale is not None:
        opts.append(("NOP", None))
        opts.append(("WScale", wscale))
    return opts


def tcp(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    dport: int,
    *,
    sport: int | None = None,
    flags: str = "S",
    seq: int | None = None,
    ack: int = 0,
    window: int = DEFAULT_WINDOW,
    options: list[tuple[str, Any]] | None = None,
    payload: bytes = b"",
    ttl: int = DEFAULT_TTL,
    df: bool = True,
    ip_options: Sequence[IPOption] | None = None,
) -> Packet:
    """A TCP segment; ``seq`` (the ISN for a SYN) and ``sport`` come from ``rng`` if unset.

    ``options=None`` means the usual SYN options for a SYN and none otherwise.
    """
    if options is None:
        options = tcp_options(rng) if "S" in flags else []
    segment = TCP(
        sport=sport if sport is not None else ephemeral_port(rng),
        dport=dport,
        flags=flags,
        seq=seq if seq is not None else rng.getrandbits(32),
        ack=ack,
        window=window,
        options=options,
    )
    packet = ip_layer(rng, src, dst, ttl=ttl, df=df, ip_options=ip_options) / segment
    return packet / Raw(payload) if payload else packet


def tcp_syn(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    dport: int,
    *,
    mss: int | None = DEFAULT_MSS,
    wscale: int | None = DEFAULT_WSCALE,
    sack_permitted: bool = True,
    timestamps: bool = True,
    **kwargs: Any,
) -> Packet:
    """A SYN with the named options (each ``None``/False to leave it out)."""
    options = tcp_options(
        rng, mss=mss, wscale=wscale, sack_permitted=sack_permitted, timestamps=timestamps
    )
    return tcp(rng, src, dst, dport, flags="S", options=options, **kwargs)


def udp(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    dport: int,
    payload: bytes = b"",
    *,
    sport: int | None = None,
    zero_checksum: bool = False,
    ttl: int = DEFAULT_TTL,
    df: bool = False,
    ip_options: Sequence[IPOption] | None = None,
) -> Packet:
    """A UDP datagram. ``zero_checksum`` sends checksum 0: "none" on IPv4 (RFC 768), and
    invalid on IPv6 (RFC 8200 8.1) -- both are worth sending."""
    datagram = UDP(sport=sport if sport is not None else ephemeral_port(rng), dport=dport)
    if zero_checksum:
        datagram.chksum = 0
    return ip_layer(rng, src, dst, ttl=ttl, df=df, ip_options=ip_options) / datagram / Raw(payload)


def icmp_echo(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    *,
    ident: int | None = None,
    seq: int = 1,
    payload: bytes = b"",
    reply: bool = False,
    ttl: int = DEFAULT_TTL,
) -> Packet:
    """ICMP (v4) or ICMPv6 echo request/reply; the identifier comes from ``rng``."""
    ident = ident if ident is not None else rng.randrange(1, 0x10000)
    base = ip_layer(rng, src, dst, ttl=ttl)
    if is_v6(src):
        echo = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=seq, data=payload)
        return base / echo
    return base / ICMP(type=0 if reply else 8, id=ident, seq=seq) / Raw(payload)


# --------------------------------------------------------------------------- the awkward ones


def _reparsed(packet: Packet) -> Packet:
    """The packet as it will be on the wire, with every length and checksum filled in."""
    cls = IPv6 if isinstance(packet, IPv6) else IP
    parsed: Packet = cls(bytes(packet))
    return parsed


def _wrong_checksum(rng: random.Random, correct: int, *, avoid_zero: bool) -> int:
    """A checksum that fails verification: not ``correct`` and not its ones'-complement
    twin (0x0000 and 0xffff are the same number, so a verifier would accept the swap)."""
    twins = {correct, 0xFFFF if correct == 0 else (0 if correct == 0xFFFF else correct)}
    while True:
        value = rng.randrange(0x10000)
        if value not in twins and not (avoid_zero and value == 0):
            return value


def with_bad_ip_checksum(rng: random.Random, packet: Packet) -> Packet:
    """IPv4 packet with a wrong header checksum (IPv6 has none: ValueError).

    Only :func:`send_raw` with ``iface=`` or :func:`write_to_tun` deliver it unchanged:
    the kernel rewrites the header checksum of anything sent through a raw IP socket.
    """
    parsed = _reparsed(packet)
    if not isinstance(parsed, IP):
        raise ValueError("IPv6 has no header checksum")
    parsed.chksum = _wrong_checksum(rng, parsed.chksum, avoid_zero=False)
    return parsed


def with_bad_l4_checksum(rng: random.Random, packet: Packet) -> Packet:
    """The TCP, UDP, ICMP or ICMPv6 checksum made wrong (never 0 for UDP: that means none)."""
    parsed = _reparsed(packet)
    for layer_type in (
        TCP,
        UDP,
        ICMP,
        ICMPv6EchoRequest,
        ICMPv6EchoReply,
        ICMPv6DestUnreach,
        ICMPv6PacketTooBig,
        ICMPv6TimeExceeded,
    ):
        if parsed.haslayer(layer_type):
            layer = parsed.getlayer(layer_type)
            field = "chksum" if layer_type in (TCP, UDP, ICMP) else "cksum"
            correct = getattr(layer, field)
            setattr(layer, field, _wrong_checksum(rng, correct, avoid_zero=layer_type is UDP))
            return parsed
    raise ValueError(f"no TCP/UDP/ICMP layer in {packet.summary()}")


def with_hop_by_hop(packet: Packet) -> Packet:
    """IPv6 packet with a hop-by-hop header carrying Router Alert: IPv6's "IP options"."""
    if not isinstance(packet, IPv6):
        raise ValueError("hop-by-hop options are IPv6 only; use ip_options= for IPv4")
    upper = packet.payload.copy()
    head = packet.copy()
    head.remove_payload()
    head.nh = 0
    return head / IPv6ExtHdrHopByHop(nh=packet.nh, options=[RouterAlert()]) / upper


def with_destination_options(packet: Packet) -> Packet:
    """IPv6 packet with a destination-options header (a PadN option) before its upper layer."""
    if not isinstance(packet, IPv6):
        raise ValueError("destination options are IPv6 only")
    upper = packet.payload.copy()
    head = packet.copy()
    head.remove_payload()
    head.nh = 60  # RFC 8200 4.6: Destination Options
    return head / IPv6ExtHdrDestOpt(nh=packet.nh, options=[PadN(optdata=b"\x00" * 4)]) / upper


def df_oversize(
    rng: random.Random,
    src: Addr,
    dst: Addr,
    dport: int,
    *,
    mtu: int,
    excess: int = 100,
    proto: Literal["udp", "tcp"] = "udp",
) -> Packet:
    """A packet ``excess`` bytes over ``mtu`` that may not be fragmented on the way
    (IPv4 DF; IPv6 is never fragmented by routers): it must provoke "fragmentation
    needed" / "packet too big", not vanish."""
    header = IPV6_HEADER if is_v6(src) else IPV4_HEADER
    l4 = 8 if proto == "udp" else 20
    size = mtu + excess - header - l4
    if size < 0:
        raise ValueError(f"mtu {mtu} is smaller than the headers")
    payload = rng.randbytes(size)
    if proto == "udp":
        return udp(rng, src, dst, dport, payload, df=True)
    return tcp(rng, src, dst, dport, flags="PA", payload=payload, options=[], df=True)


def fragments(rng: random.Random, packet: Packet, fragment_size: int) -> list[Packet]:
    """Split ``packet`` into IP fragments carrying ``fragment_size`` payload bytes each
    (rounded down to a multiple of 8). IPv4 uses the header's ID; IPv6 gets a fragment
    header with an ID from ``rng``. Fragments come in order; shuffle them to reorder.
    """
    unit = max(FRAGMENT_UNIT, fragment_size - fragment_size % FRAGMENT_UNIT)
    parsed = _reparsed(packet)
    if isinstance(parsed, IP):
        upper = bytes(parsed.payload)
        pieces: list[Packet] = []
        for offset in range(0, len(upper), unit):
            head = parsed.copy()
            head.remove_payload()
            head.len = None
            head.chksum = None
            head.frag = (parsed.frag or 0) + offset // FRAGMENT_UNIT
            more = offset + unit < len(upper)
            head.flags = (int(parsed.flags) & ~0x2) | (0x1 if more else 0)  # clear DF, set MF
            if offset:
                head.options = []  # only copied options go on; none of ours are copied
            pieces.append(IP(bytes(head / Raw(upper[offset : offset + unit]))))
        return pieces
    upper = bytes(parsed.payload)
    ident = rng.getrandbits(32)
    pieces6: list[Packet] = []
    for offset in range(0, len(upper), unit):
        head6: Packet = parsed.copy()
        head6.remove_payload()
        head6.plen = None
        head6.nh = 44
        frag = IPv6ExtHdrFragment(
            nh=parsed.nh,
            offset=offset // FRAGMENT_UNIT,
            m=int(offset + unit < len(upper)),
            id=ident,
        )
        pieces6.append(IPv6(bytes(head6 / frag / Raw(upper[offset : offset + unit]))))
    return pieces6


def icmp_error(
    original: Packet | bytes,
    *,
    reporter: Addr,
    kind: IcmpErrorKind = "unreachable",
    code: int | None = None,
    mtu: int | None = None,
    quote: int | None = None,
    ttl: int = DEFAULT_TTL,
) -> Packet:
    """The ICMP error a router at ``reporter`` would send back to ``original``'s source.

    ``kind``: "unreachable" (host unreachable), "port-unreachable", "time-exceeded", or
    "frag-needed" (IPv4 type 3 code 4 / ICMPv6 Packet Too Big; give ``mtu``). The quote is
    as much of the original as fits 576 (IPv4) / 1280 (IPv6) bytes, or ``quote`` bytes.
    """
    raw = bytes(original)
    first: Packet = IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)
    if isinstance(first, IPv6):
        limit = ICMPV6_QUOTE_LIMIT - IPV6_HEADER - ICMP_HEADER
        body = raw[: quote if quote is not None else limit]
        outer = IPv6(src=str(ip_address(reporter)), dst=first.src, hlim=ttl)
        if kind == "frag-needed":
            if mtu is None:
                raise ValueError("frag-needed (packet too big) needs mtu=")
            return outer / ICMPv6PacketTooBig(mtu=mtu) / Raw(body)
        if kind == "time-exceeded":
            return outer / ICMPv6TimeExceeded(code=code or 0) / Raw(body)
        default = 4 if kind == "port-unreachable" else 3  # RFC 4443: 4 port, 3 address
        return outer / ICMPv6DestUnreach(code=default if code is None else code) / Raw(body)
    limit = ICMPV4_QUOTE_LIMIT - IPV4_HEADER - ICMP_HEADER
    body = raw[: quote if quote is not None else limit]
    outer4 = IP(src=str(ip_address(reporter)), dst=first.src, ttl=ttl)
    if kind == "time-exceeded":
        return outer4 / ICMP(type=11, code=code or 0) / Raw(body)
    if kind == "frag-needed":
        if mtu is None:
            raise ValueError("frag-needed needs mtu=")
        return outer4 / ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(body)
    default = 3 if kind == "port-unreachable" else 1
    return outer4 / ICMP(type=3, code=default if code is None else code) / Raw(body)


def truncated(rng: random.Random, packet: Packet | bytes, *, keep: int | None = None) -> bytes:
    """The first ``keep`` bytes of the packet (random if unset, at least 1, less than all).

    The IP total length still claims the full size: a parser that trusts it reads past
    the end.
    """
    raw = bytes(packet)
    if len(raw) < 2:
        raise ValueError("packet too short to truncate")
    keep = keep if keep is not None else rng.randrange(1, len(raw))
    return raw[:keep]


def garbage(rng: random.Random, size: int, *, version: int | None = None) -> bytes:
    """``size`` random bytes; ``version`` pins the first nibble (4 or 6 to look like IP,
    anything else to look like nothing)."""
    data = bytearray(rng.randbytes(size))
    if version is not None and data:
        data[0] = (version << 4) | (data[0] & 0x0F)
    return bytes(data)


# --------------------------------------------------------------------------- injection


_SEND_SCRIPT = r"""
import socket, sys
iface, dst, ethertype, mac, hexdata = sys.argv[1:6]
data = bytes.fromhex(hexdata)
if iface:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(int(ethertype)))
    s.sendto(data, (iface, int(ethertype), 0, 0, bytes.fromhex(mac)))
else:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(data, (dst, 0))
s.close()
"""


def _destination(data: bytes) -> tuple[str, int]:
    """(destination address, ethertype) read from the packet's own header."""
    version = data[0] >> 4 if data else 0
    if version == 6 and len(data) >= IPV6_HEADER:
        return str(ipaddress.IPv6Address(data[24:40])), ETH_P_IPV6
    if version == 4 and len(data) >= IPV4_HEADER:
        return str(ipaddress.IPv4Address(data[16:20])), ETH_P_IP
    return "", ETH_P_IP


def send_raw(
    host: Host,
    packet: Packet | bytes,
    *,
    iface: str | None = None,
    dst_mac: bytes = BROADCAST_MAC,
    python: str | None = None,
) -> None:
    """Send one crafted packet from inside ``host``.

    ``iface=None``: a raw IP socket, routed by the host's kernel like an application's
    packet. The kernel then fills in the IPv4 total length and header checksum (raw(7)),
    so use ``iface`` for packets whose IPv4 header is meant to be wrong.
    ``iface="NAME"``: a packet socket on that interface, bytes untouched. On an Ethernet
    link (veth) give the neighbour's ``dst_mac``: a broadcast frame carrying a unicast IP
    packet is dropped by the receiver's TCP/UDP. On a TUN it reaches the tun reader as is.

    Uses ``host.socket`` (one syscall, no subprocess); hosts that cannot hand out sockets
    (VM backends) get a small helper script run in the host instead.
    """
    data = bytes(packet)
    dst, ethertype = _destination(data)
    if iface is None and not dst:
        raise ValueError("cannot route a packet without a readable IP destination; give iface=")
    try:
        if iface is not None:
            sock = host.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
            target: Any = (iface, ethertype, 0, 0, dst_mac)
        else:
            family = socket.AF_INET6 if ":" in dst else socket.AF_INET
            sock = host.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            target = (dst, 0)
    except NotImplementedError:
        host.run(
            [
                python or host_python(host),
                "-c",
                _SEND_SCRIPT,
                iface or "",
                dst,
                str(ethertype),
                dst_mac.hex(),
                data.hex(),
            ],
            check=True,
            timeout=10.0,
        )
        return
    with sock:
        sock.sendto(data, target)


def write_to_tun(fd: int, packet: Packet | bytes, *, packet_info: bool = False) -> int:
    """Write one packet into a TUN fd; ``packet_info`` prepends the 4-byte header a TUN
    without IFF_NO_PI expects (flags, ethertype). Returns bytes written."""
    data = bytes(packet)
    if packet_info:
        _, ethertype = _destination(data)
        data = struct.pack("!HH", 0, ethertype) + data
    return os.write(fd, data)


__all__ = [
    "ROUTER_ALERT",
    "Addr",
    "IcmpErrorKind",
    "df_oversize",
    "ephemeral_port",
    "fragments",
    "garbage",
    "icmp_echo",
    "icmp_error",
    "ip_address",
    "ip_layer",
    "is_v6",
    "send_raw",
    "tcp",
    "tcp_options",
    "tcp_syn",
    "truncated",
    "udp",
    "with_bad_ip_checksum",
    "with_bad_l4_checksum",
    "with_hop_by_hop",
    "write_to_tun",
]
