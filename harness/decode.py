"""An independent, minimal decoder: pcap/pcapng frames, IP/TCP/UDP/ICMP headers, checksums.

Why not scapy or ``ztun.wire``: the checksum assertion is the harness's second opinion on
ztun's packet rewriting. ztun's own code would agree with its own bugs, and scapy
recomputes checksums whenever a field is unset, which hides exactly the errors we look
for. So this module reads the bytes itself and sums them with its own ones'-complement
arithmetic (RFC 1071). It decodes only what the assertions need.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------- constants

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
PROTO_NAMES = {PROTO_ICMP: "ICMP", PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_ICMPV6: "ICMPv6"}
IPV6_EXT_HOP, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_DEST = 0, 43, 44, 60
IPV6_EXT_AH, IPV6_NO_NEXT = 51, 59

IPV4_MIN_HEADER, IPV6_HEADER, TCP_MIN_HEADER, UDP_HEADER, ICMP_MIN_HEADER = 20, 40, 20, 8, 4
TCP_CSUM_AT, UDP_CSUM_AT, ICMP_CSUM_AT, IPV4_CSUM_AT = 16, 6, 2, 10

# Link types (https://www.tcpdump.org/linktypes.html) this decoder strips.
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
LINKTYPE_RAW_ALIASES = (12, 14)  # DLT_RAW on some BSDs / old libpcap
ETH_HEADER, SLL_HEADER, SLL2_HEADER, NULL_HEADER, VLAN_TAG = 14, 16, 20, 4, 4
ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETHERTYPE_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
PCAPNG_SHB, PCAPNG_IDB, PCAPNG_EPB, PCAPNG_SPB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000003
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAP_HEADER, PCAP_RECORD = 24, 16

TCP_FLAG_NAMES = "FSRPAUEC"  # bit 0 = FIN ... bit 7 = CWR, tcpdump's letters


# --------------------------------------------------------------------------- checksums


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 ones'-complement sum of 16-bit big-endian words, folded to 16 bits.

    ``int.from_bytes(data) % 0xffff`` is that sum because 2**16 == 1 (mod 0xffff); the
    only care needed is that a non-zero input whose sum is a multiple of 0xffff sums to
    0xffff (ones'-complement "negative zero"), never to 0.
    """
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    value = int.from_bytes(raw, "big")
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def internet_checksum(*parts: bytes) -> int:
    """The checksum to put in a header whose checksum field is zero in ``parts``."""
    return ~ones_sum(b"".join(parts)) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """RFC 793/768 (IPv4, 12 bytes) or RFC 8200 8.1 (IPv6, 40 bytes) pseudo-header."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


# --------------------------------------------------------------------------- pcap


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: ``index`` is 1-based like Wireshark's frame number."""

    index: int
    timestamp: float
    linktype: int
    data: bytes
    orig_len: int

    @property
    def truncated(self) -> bool:
        """The capture kept fewer bytes than were on the wire (snaplen)."""
        return len(self.data) < self.orig_len


def read_pcap(path: str | Path) -> Iterator[Frame]:
    """Frames of a pcap (any byte order, us or ns) or pcapng file."""
    raw = Path(path).read_bytes()
    if len(raw) < 4:
        return iter(())
    if struct.unpack("<I", raw[:4])[0] == PCAPNG_SHB:
        return _read_pcapng(raw)
    return _read_classic(raw, str(path))


def _read_classic(raw: bytes, name: str) -> Iterator[Frame]:
    magic_le = struct.unpack("<I", raw[:4])[0]
    magic_be = struct.unpack(">I", raw[:4])[0]
    if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian, magic = "<", magic_le
    elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian, magic = ">", magic_be
    else:
        raise ValueError(f"{name}: not a pcap or pcapng file (magic {raw[:4].hex()})")
    scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    linktype = struct.unpack(endian + "I", raw[20:24])[0] & 0x0FFFFFFF
    offset, index = PCAP_HEADER, 0
    while offset + PCAP_RECORD <= len(raw):
        sec, frac, incl, orig = struct.unpack(endian + "IIII", raw[offset : offset + PCAP_RECORD])
        offset += PCAP_RECORD
        data = raw[offset : offset + incl]
        offset += incl
        index += 1
        yield Frame(index, sec + frac * scale, linktype, data, orig)


def _read_pcapng(raw: bytes) -> Iterator[Frame]:
    endian = "<"
    offset, index = 0, 0
    interfaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
    while offset + 12 <= len(raw):
        block_type = struct.unpack(endian + "I", raw[offset : offset + 4])[0]
        if block_type == PCAPNG_SHB:
            bom = raw[offset + 8 : offset + 12]
            endian = "<" if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC else ">"
            interfaces = []
        length = struct.unpack(endian + "I", raw[offset + 4 : offset + 8])[0]
        if length < 12:
            raise ValueError(f"pcapng block at {offset} has length {length}")
        body = raw[offset + 8 : offset + length - 4]
        if block_type == PCAPNG_IDB:
            linktype = struct.unpack(endian + "H", body[:2])[0]
            interfaces.append((linktype, _pcapng_tick(body[8:], endian)))
        elif block_type == PCAPNG_EPB:
            iface, high, low, incl, orig = struct.unpack(endian + "IIIII", body[:20])
            linktype, tick = interfaces[iface]
            index += 1
            yield Frame(index, ((high << 32) | low) * tick, linktype, body[20 : 20 + incl], orig)
        elif block_type == PCAPNG_SPB and interfaces:
            (orig,) = struct.unpack(endian + "I", body[:4])
            index += 1
            yield Frame(index, 0.0, interfaces[0][0], body[4 : 4 + orig], orig)
        offset += length


def _pcapng_tick(options: bytes, endian: str) -> float:
    """Seconds per timestamp unit from the if_tsresol option (default microseconds)."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[pos : pos + 4])
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            value = options[pos + 4]
            return float(2 ** -(value & 0x7F)) if value & 0x80 else float(10**-value)
        pos += 4 + length + (-length % 4)
    return 1e-6


def write_pcap(path: str | Path, packets: Iterable[bytes], linktype: int = LINKTYPE_RAW) -> Path:
    """Write raw IP packets as a pcap (for tests and for canonical copies)."""
    out = bytearray(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 262144, linktype))
    for packet in packets:
        out += struct.pack("<IIII", 0, 0, len(packet), len(packet)) + packet
    target = Path(path)
    target.write_bytes(bytes(out))
    return target


def ip_bytes(frame: Frame) -> bytes | None:
    """The IP packet inside a frame, or None if it carries something else (ARP, LLDP...)."""
    data, lt = frame.data, frame.linktype
    if lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *LINKTYPE_RAW_ALIASES):
        return data or None
    if lt == LINKTYPE_ETHERNET:
        if len(data) < ETH_HEADER:
            return None
        ethertype, pos = struct.unpack("!H", data[12:14])[0], ETH_HEADER
        while ethertype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ) and len(data) >= pos + VLAN_TAG:
            ethertype = struct.unpack("!H", data[pos + 2 : pos + 4])[0]
            pos += VLAN_TAG
        return data[pos:] if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if lt == LINKTYPE_LINUX_SLL:
        ethertype = struct.unpack("!H", data[14:16])[0] if len(data) >= SLL_HEADER else 0
        return data[SLL_HEADER:] if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if lt == LINKTYPE_LINUX_SLL2:
        ethertype = struct.unpack("!H", data[0:2])[0] if len(data) >= SLL2_HEADER else 0
        return data[SLL2_HEADER:] if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return data[NULL_HEADER:] if len(data) > NULL_HEADER else None
    return None


# --------------------------------------------------------------------------- IP decoding


@dataclass(frozen=True, slots=True)
class IpPacket:
    """The fields of one IP packet the assertions use, decoded from bytes."""

    data: bytes
    version: int
    src: str
    dst: str
    src_raw: bytes
    dst_raw: bytes
    header_len: int  # IPv4 header / IPv6 header plus extension headers
    total_len: int  # as the header claims
    protocol: int  # upper layer (after IPv6 extension headers); -1 if unknown
    fragmented: bool  # not a whole datagram: L4 checksum cannot be verified
    first_fragment: bool
    error: str | None = None  # why it could not be decoded fully

    @property
    def l4(self) -> bytes:
        return self.data[self.header_len : self.total_len]

    @property
    def complete(self) -> bool:
        """All the bytes the header claims were captured."""
        return len(self.data) >= self.total_len

    @property
    def sport(self) -> int | None:
        return self._port(0)

    @property
    def dport(self) -> int | None:
        return self._port(2)

    def _port(self, at: int) -> int | None:
        l4 = self.l4
        if self.protocol in (PROTO_TCP, PROTO_UDP) and self.first_fragment and len(l4) >= 4:
            return int(struct.unpack("!H", l4[at : at + 2])[0])
        return None

    @property
    def tcp_flags(self) -> str:
        l4 = self.l4
        if self.protocol != PROTO_TCP or not self.first_fragment or len(l4) < 14:
            return ""
        bits = l4[13]
        return "".join(c for i, c in enumerate(TCP_FLAG_NAMES) if bits & (1 << i))

    @property
    def icmp_type(self) -> int | None:
        l4 = self.l4
        if self.protocol in (PROTO_ICMP, PROTO_ICMPV6) and self.first_fragment and l4:
            return l4[0]
        return None

    def summary(self) -> str:
        """tcpdump-like one-liner: ``IPv4 10.0.0.1:1234 > 10.0.0.2:80 TCP [S] len=0``."""
        name = PROTO_NAMES.get(self.protocol, f"proto {self.protocol}")
        fam = f"IPv{self.version}"
        if self.sport is not None:
            ends = f"{_hostport(self.src, self.sport)} > {_hostport(self.dst, self.dport)}"
        else:
            ends = f"{self.src} > {self.dst}"
        extra = ""
        if self.protocol == PROTO_TCP and self.tcp_flags:
            extra = f" [{self.tcp_flags}]"
        elif self.icmp_type is not None:
            extra = f" type={self.icmp_type}"
        frag = " frag" if self.fragmented else ""
        return f"{fam} {ends} {name}{extra}{frag} len={len(self.data)}"


def _hostport(addr: str, port: int | None) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class DecodeError(ValueError):
    """Bytes that are not an IP packet this decoder can read."""


def decode_ip(data: bytes) -> IpPacket:
    """Decode an IPv4 or IPv6 packet (headers only; the payload stays bytes)."""
    if not data:
        raise DecodeError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _decode_v4(data)
    if version == 6:
        return _decode_v6(data)
    raise DecodeError(f"IP version {version}")


def _decode_v4(data: bytes) -> IpPacket:
    if len(data) < IPV4_MIN_HEADER:
        raise DecodeError(f"IPv4 header truncated ({len(data)} bytes)")
    ihl = (data[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or len(data) < ihl:
        raise DecodeError(f"IPv4 header length {ihl} with {len(data)} bytes captured")
    total = struct.unpack("!H", data[2:4])[0]
    flags_frag = struct.unpack("!H", data[6:8])[0]
    more, offset = bool(flags_frag & 0x2000), flags_frag & 0x1FFF
    src, dst = data[12:16], data[16:20]
    return IpPacket(
        data=data,
        version=4,
        src=str(ipaddress.IPv4Address(src)),
        dst=str(ipaddress.IPv4Address(dst)),
        src_raw=src,
        dst_raw=dst,
        header_len=ihl,
        total_len=max(total, ihl),
        protocol=data[9],
        fragmented=more or offset != 0,
        first_fragment=offset == 0,
        error=None if total >= ihl else f"IPv4 total length {total} < header {ihl}",
    )


def _decode_v6(data: bytes) -> IpPacket:
    if len(data) < IPV6_HEADER:
        raise DecodeError(f"IPv6 header truncated ({len(data)} bytes)")
    payload_len = struct.unpack("!H", data[4:6])[0]
    src, dst = data[8:24], data[24:40]
    nh, pos = data[6], IPV6_HEADER
    fragmented, first, error = False, True, None
    while nh in (IPV6_EXT_HOP, IPV6_EXT_ROUTING, IPV6_EXT_DEST, IPV6_EXT_FRAGMENT, IPV6_EXT_AH):
        if len(data) < pos + 8:
            error = "IPv6 extension header truncated"
            break
        if nh == IPV6_EXT_FRAGMENT:
            frag = struct.unpack("!H", data[pos + 2 : pos + 4])[0]
            offset, more = frag >> 3, bool(frag & 1)
            fragmented = fragmented or more or offset != 0
            first = first and offset == 0
            size = 8
        elif nh == IPV6_EXT_AH:
            size = (data[pos + 1] + 2) * 4
        else:
            size = (data[pos + 1] + 1) * 8
        nh, pos = data[pos], pos + size
    return IpPacket(
        data=data,
        version=6,
        src=str(ipaddress.IPv6Address(src)),
        dst=str(ipaddress.IPv6Address(dst)),
        src_raw=src,
        dst_raw=dst,
        header_len=pos,
        total_len=IPV6_HEADER + payload_len,
        protocol=-1 if error else nh,
        fragmented=fragmented,
        first_fragment=first,
        error=error,
    )


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class ChecksumVerdict:
    """Result of checking one packet: ``problems`` empty means every checksum is right.

    ``unverified`` names what could not be checked and why (a fragment, a capture cut
    short by the snaplen) -- not a failure, but worth saying in a report.
    """

    problems: tuple[str, ...]
    unverified: tuple[str, ...]
    offloaded: tuple[str, ...]


def _field(data: bytes, at: int) -> int:
    return int(struct.unpack("!H", data[at : at + 2])[0])


def _zeroed(data: bytes, at: int) -> bytes:
    return data[:at] + b"\x00\x00" + data[at + 2 :]


def verify_checksums(data: bytes, *, allow_offload: bool = False) -> ChecksumVerdict:
    """Check the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of one packet.

    ``allow_offload`` accepts an L4 checksum equal to the bare pseudo-header sum: what a
    Linux sender leaves for the NIC (CHECKSUM_PARTIAL) and what a capture taken before
    the device shows when offloads are on.
    """
    problems: list[str] = []
    unverified: list[str] = []
    offloaded: list[str] = []
    try:
        ip = decode_ip(data)
    except DecodeError as exc:
        return ChecksumVerdict((f"not decodable: {exc}",), (), ())
    if ip.error:
        problems.append(ip.error)
    if ip.version == 4:
        header = data[: ip.header_len]
        found = _field(header, IPV4_CSUM_AT)
        if ones_sum(header) != 0xFFFF:
            expected = internet_checksum(_zeroed(header, IPV4_CSUM_AT))
            problems.append(f"IPv4 header checksum 0x{found:04x}, expected 0x{expected:04x}")
    proto = ip.protocol
    if proto not in (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6):
        return ChecksumVerdict(tuple(problems), tuple(unverified), ())
    name = PROTO_NAMES[proto]
    if ip.fragmented:
        unverified.append(f"{name} checksum: IP fragment")
        return ChecksumVerdict(tuple(problems), tuple(unverified), ())
    if not ip.complete:
        unverified.append(f"{name} checksum: {len(data)} of {ip.total_len} bytes captured")
        return ChecksumVerdict(tuple(problems), tuple(unverified), ())
    l4 = ip.l4
    at, minimum = {
        PROTO_TCP: (TCP_CSUM_AT, TCP_MIN_HEADER),
        PROTO_UDP: (UDP_CSUM_AT, UDP_HEADER),
        PROTO_ICMP: (ICMP_CSUM_AT, ICMP_MIN_HEADER),
        PROTO_ICMPV6: (ICMP_CSUM_AT, ICMP_MIN_HEADER),
    }[proto]
    if len(l4) < minimum:
        problems.append(f"{name} header truncated: {len(l4)} bytes")
        return ChecksumVerdict(tuple(problems), tuple(unverified), ())
    if proto == PROTO_UDP:
        udp_len = _field(l4, 4)
        if udp_len < UDP_HEADER or udp_len > len(l4):
            problems.append(f"UDP length {udp_len} but {len(l4)} bytes of IP payload")
            return ChecksumVerdict(tuple(problems), tuple(unverified), ())
        l4 = l4[:udp_len]
    found = _field(l4, at)
    if proto == PROTO_UDP and found == 0:
        if ip.version == 6:
            problems.append("UDP checksum 0 (none) is not allowed over IPv6 (RFC 8200 8.1)")
        return ChecksumVerdict(tuple(problems), tuple(unverified), ())
    pseudo = b"" if proto == PROTO_ICMP else pseudo_header(ip.src_raw, ip.dst_raw, proto, len(l4))
    if ones_sum(pseudo + l4) != 0xFFFF:
        if allow_offload and pseudo and found == ones_sum(pseudo):
            offloaded.append(f"{name} checksum left for offload (pseudo-header sum)")
        else:
            expected = internet_checksum(pseudo, _zeroed(l4, at))
            if proto == PROTO_UDP and expected == 0:
                expected = 0xFFFF
            problems.append(f"{name} checksum 0x{found:04x}, expected 0x{expected:04x}")
    return ChecksumVerdict(tuple(problems), tuple(unverified), tuple(offloaded))


def packets_of(path: str | Path) -> Iterator[tuple[Frame, bytes]]:
    """(frame, IP bytes) for every IP frame of a capture; non-IP frames are skipped."""
    for frame in read_pcap(path):
        data = ip_bytes(frame)
        if data is not None:
            yield frame, data


def safe_summary(data: bytes) -> str:
    """:meth:`IpPacket.summary`, or a hex prefix if the bytes do not decode."""
    try:
        return decode_ip(data).summary()
    except DecodeError as exc:
        return f"undecodable ({exc}): {data[:32].hex()}"
