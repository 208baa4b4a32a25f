"""The system stack: ztun's sans-IO packet core (after sing-tun's "system" stack).

TCP is never terminated here. A packet of an app flow is rewritten in place onto a
hairpin -- from `peer:nat_port` to `server:listen_port`, both addresses of the TUN's
own prefix -- and written back into the TUN, so the *kernel* accepts the connection on
ztun's local listener and runs the TCP state machine, windows and congestion control.
The listener's answers come out of the TUN again and are rewritten back to
`dst:dport -> client:cport`. Per packet that is four field stores and two RFC 1624
checksum additions with deltas precomputed per flow.

UDP datagrams become `UdpDatagram` events (full-cone sessions per app source); answers
are built by `udp_reply`. ICMP/ICMPv6 echo requests are answered in place. Fragments are
reassembled first (`reassembly`), and what ztun writes back larger than the TUN's MTU is
fragmented (`fragment`).

Time is always an argument; `receive` returns what to write back to the TUN (a view of
the rewritten input, or a new packet), an event, or None when the packet was dropped --
every drop is counted in `counters` under a reason.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from typing import Protocol

from ..wire import (
    ACK,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    RST,
    SYN,
    IcmpPacket,
    Icmpv6Packet,
    Ipv4Packet,
    Ipv6Packet,
    TcpPacket,
    UdpPacket,
    WireError,
    build_icmp_echo,
    build_icmp_unreachable,
    build_tcp,
    build_udp,
    parse_ip,
)
from ..wire.checksum import ONES_MOD, apply_delta, checksum_delta, ones_sum, pseudo_header_sum
from ..wire.fragment import IPV6_MIN_MTU, fragment_ip
from ..wire.icmp import ECHO_REPLY as ICMP_ECHO_REPLY
from ..wire.icmp import ECHO_REQUEST as ICMP_ECHO_REQUEST
from ..wire.icmpv6 import ECHO_REPLY as ICMPV6_ECHO_REPLY
from ..wire.icmpv6 import ECHO_REQUEST as ICMPV6_ECHO_REQUEST
from ..wire.ipv4 import Ipv4Header
from ..wire.tcp import TcpHeader
from ..wire.udp import UdpHeader
from ..wire.vnet import apply_partial_delta
from .events import (
    StackEvent,
    TcpSession,
    TcpSessionExpired,
    UdpDatagram,
    UdpSession,
    UdpSessionExpired,
)
from .icmpecho import IcmpEchoRequest, IcmpMode, prohibited
from .nat import CLOSING, PENDING, NatExhausted, TcpNatTable
from .reassembly import Reassembler
from .udp import UdpSessionTable

REPLY_HOP_LIMIT = 64
# Request -> reply changes only the type byte of the first checksummed word.
_ECHO_DELTA_V4 = checksum_delta(bytes((ICMP_ECHO_REQUEST, 0)), bytes((ICMP_ECHO_REPLY, 0)))
_ECHO_DELTA_V6 = checksum_delta(bytes((ICMPV6_ECHO_REQUEST, 0)), bytes((ICMPV6_ECHO_REPLY, 0)))

#: What `receive` hands back: a view of the input rewritten in place (write the frame
#: back as read), a new packet, an event for the engine (a datagram, an echo request to
#: forward), packets to write in order (a reply to a reassembled datagram, fragmented to
#: the MTU), or None (dropped, or held).
Output = memoryview | bytearray | UdpDatagram | IcmpEchoRequest | list[bytearray] | None

# An IPv4 header without options followed by a UDP header: total length, flags/fragment
# offset, source, destination; source port, destination port, UDP length, checksum.
# The offsets and lengths come from ztun.wire; they are copied into module globals
# because the fast lanes read them per packet (a global is cheaper than an attribute).
_V4_UDP = struct.Struct("!2xH2xH4x4s4sHHHH")
_V4_HEADER_LEN = Ipv4Header.MIN_HEADER_LEN
_UDP_HEADER_LEN = UdpHeader.HEADER_LEN
_V4_UDP_LEN = _V4_HEADER_LEN + _UDP_HEADER_LEN
# Version 4, IHL 5 words: the first byte of an IPv4 header without options.
_V4_NO_OPTIONS = Ipv4Header.VERSION << 4 | _V4_HEADER_LEN >> Ipv4Header.IHL_SHIFT
_V4_PROTOCOL = Ipv4Header.PROTOCOL
_FRAGMENT_BITS = Ipv4Header.MF | Ipv4Header.FRAG_MASK
# An IPv4 header without options followed by a TCP header up to its flags: total length,
# flags/fragment offset, source, destination; source port, destination port, data
# offset (high nibble), flags. Then where the rewrite writes.
_V4_TCP = struct.Struct("!2xH2xH4x4s4sHH8xBB")
_V4_TCP_LEN = _V4_HEADER_LEN + TcpHeader.MIN_HEADER_LEN
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_V4_CHECKSUM = Ipv4Header.CHECKSUM
_V4_SRC, _V4_DST = Ipv4Header.SRC.start, Ipv4Header.DST.start
_V4_PORTS = _V4_HEADER_LEN + TcpHeader.SRC_PORT
_V4_TCP_CHECKSUM = _V4_HEADER_LEN + TcpHeader.CHECKSUM
_TCP_DATA_OFF_SHIFT, _TCP_MIN_WORDS = TcpHeader.DATA_OFF_SHIFT, TcpHeader.MIN_HEADER_LEN >> 2

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class NatObserver(Protocol):
    """Told about every TCP NAT entry (docs/contracts.md section 6): the kernel NAT
    mirrors the table into its BPF maps from these calls. The table stays the source
    of truth; an observer must not raise (what it cannot mirror stays on this path)."""

    def installed(self, session: TcpSession) -> None:
        """A SYN allocated `session`'s NAT port; the rewritten SYN is not written yet."""

    def removed(self, session: TcpSession) -> None:
        """`session`'s NAT entry is gone (never accepted, or its linger ended)."""


def hairpin_peer(iface: IpInterface) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The fake remote end of the hairpin: the next usable address of the TUN's prefix."""
    net = iface.network
    # IPv4 skips the network and broadcast addresses; IPv6 skips host part 0, the
    # subnet-router anycast address, which a forwarding kernel treats as local.
    if iface.version == 4:
        reserved_low, reserved_high = (1, 1) if net.prefixlen < 31 else (0, 0)
    else:
        reserved_low, reserved_high = 1, 0
    usable = net.num_addresses - reserved_low - reserved_high
    if usable < 2:
        raise ValueError(
            f"TUN address {iface}: the prefix needs room for a second address "
            f"(use at most /{30 if iface.version == 4 else 126})"
        )
    first = int(net.network_address) + reserved_low
    last = first + usable - 1
    candidate = int(iface.ip) + 1
    if candidate > last:
        candidate = first
    if candidate == int(iface.ip):
        candidate += 1
    return ipaddress.ip_address(candidate)


def _rewrite(
    ip: Ipv4Packet | Ipv6Packet,
    tcp: TcpPacket,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    l4_delta: int,
    ip_delta: int,
    csum_partial: bool,
) -> memoryview:
    """Rewrite a segment's addresses and ports in place; fix checksums by the deltas.

    An offloaded frame's transport field is the uncomplemented pseudo-header sum, so it
    takes only the address delta (the ports are in the part the kernel sums later).
    """
    ip.src = src
    ip.dst = dst
    tcp.src_port = sport
    tcp.dst_port = dport
    if csum_partial:
        tcp.checksum = apply_partial_delta(tcp.checksum, ip_delta)
    else:
        tcp.checksum = apply_delta(tcp.checksum, l4_delta)
    if isinstance(ip, Ipv4Packet):
        ip.checksum = apply_delta(ip.checksum, ip_delta)
    return ip.buf


class SystemStack:
    def __init__(
        self,
        *,
        inet4: ipaddress.IPv4Interface | None,
        inet6: ipaddress.IPv6Interface | None,
        listen_port4: int = 0,
        listen_port6: int = 0,
        udp_timeout: float = 60.0,
        tcp_pending_timeout: float = 30.0,
        tcp_closing_linger: float = 30.0,
        nat_shard: tuple[int, int] = (0, 1),
        mtu: int = 1500,
        rng: random.Random | None = None,
        icmp: IcmpMode = IcmpMode.LOCAL,
        nat_observer: NatObserver | None = None,
    ) -> None:
        """`nat_shard` (k, n): this is worker k of n and hands out NAT ports k mod n.
        `mtu`: the TUN's; a packet ztun writes that is larger goes out in fragments
        (IPv6 at no less than 1280 bytes: RFC 8200 sec. 5 has every link that carries
        IPv6 carry that much, and macOS and Windows keep IPv6's own MTU at 1280 or more
        when the TUN's is smaller; Linux turns IPv6 off on such a device).
        `rng`: where fragment identifications come from (seeded in tests). `icmp`: what
        an echo request gets (`ztun.stack.icmpecho`). `nat_observer`: told when a TCP NAT
        entry is made and when it goes."""
        if inet4 is None and inet6 is None:
            raise ValueError("the TUN needs at least one address (IPv4 or IPv6)")
        self.counters: Counter[str] = Counter()
        self.nat_observer = nat_observer
        self.mtu = mtu
        self.mtu6 = max(mtu, IPV6_MIN_MTU)
        self.icmp = icmp
        self._rng = rng if rng is not None else random.Random()
        self.reassembly = Reassembler(self.counters)
        self.nat4: TcpNatTable | None = None
        self.nat6: TcpNatTable | None = None
        if inet4 is not None:
            self.nat4 = TcpNatTable(
                4,
                inet4.ip.packed,
                hairpin_peer(inet4).packed,
                listen_port4,
                pending_timeout=tcp_pending_timeout,
                closing_linger=tcp_closing_linger,
                shard=nat_shard,
            )
        if inet6 is not None:
            self.nat6 = TcpNatTable(
                6,
                inet6.ip.packed,
                hairpin_peer(inet6).packed,
                listen_port6,
                pending_timeout=tcp_pending_timeout,
                closing_linger=tcp_closing_linger,
                shard=nat_shard,
            )
        self.udp = UdpSessionTable(udp_timeout)

    # -- packets from the TUN ------------------------------------------------------------

    def receive(self, packet: memoryview, now: float, csum_partial: bool = False) -> Output:
        """Handle one packet read from the TUN (rewritten in place when it is TCP/ICMP).

        `csum_partial`: the frame came with virtio NEEDS_CSUM, so its transport checksum
        field holds the uncomplemented pseudo-header sum (see `ztun.wire.vnet`).
        """
        if len(packet) >= _V4_UDP_LEN and packet[0] == _V4_NO_OPTIONS:
            proto = packet[_V4_PROTOCOL]
            if proto == IPPROTO_TCP and len(packet) >= _V4_TCP_LEN:
                segment = self._tcp4_fast(packet, csum_partial)
                if segment is not None:
                    return segment
            elif proto == IPPROTO_UDP:
                datagram = self._udp4_fast(packet, now, csum_partial)
                if datagram is not None:
                    return datagram
        return self._receive_ip(packet, now, csum_partial)

    def _receive_ip(self, packet: memoryview, now: float, csum_partial: bool) -> Output:
        """Every packet the fast lanes do not take (the reference path for them, too)."""
        try:
            ip = parse_ip(packet)
            if isinstance(ip, Ipv4Packet):
                return self._receive_v4(ip, now, csum_partial)
            return self._receive_v6(ip, now, csum_partial)
        except WireError as exc:
            self.counters[f"malformed_{exc.reason}"] += 1
            return None

    def _receive_v4(self, ip: Ipv4Packet, now: float, csum_partial: bool) -> Output:
        if not ip.verify_checksum():
            # RFC 1122 3.2.1.2: silently discard. (TCP would be dropped by the kernel
            # anyway, as the rewrite keeps the bad sum; UDP would be relayed.)
            return self._drop("ipv4_bad_checksum")
        dst = ip.dst
        if dst[0] >= 224:
            return self._drop("multicast")
        if ip.is_fragment:
            whole = self.reassembly.ipv4(ip, now)
            return None if whole is None else self._reassembled(whole, now)
        proto = ip.protocol
        if proto == IPPROTO_TCP:
            if self.nat4 is None:
                return self._drop("tcp_family_disabled")
            return self._tcp(ip, ip.payload, ip.src, dst, self.nat4, now, csum_partial)
        if proto == IPPROTO_UDP:
            return self._udp(4, ip.src, dst, ip.payload, now, csum_partial)
        if proto == IPPROTO_ICMP:
            return self._icmp4(ip)
        return self._drop("unsupported_protocol")

    def _receive_v6(self, ip: Ipv6Packet, now: float, csum_partial: bool) -> Output:
        dst = ip.dst
        if dst[0] == 0xFF:
            return self._drop("multicast")
        fragment = ip.fragment()
        if fragment is not None and not fragment.is_atomic:
            whole = self.reassembly.ipv6(ip, fragment, now)
            return None if whole is None else self._reassembled(whole, now)
        proto, offset = ip.upper_layer()
        payload = ip.buf[offset:]
        if proto == IPPROTO_TCP:
            if self.nat6 is None:
                return self._drop("tcp_family_disabled")
            return self._tcp(ip, payload, ip.src, dst, self.nat6, now, csum_partial)
        if proto == IPPROTO_UDP:
            return self._udp(6, ip.src, dst, payload, now, csum_partial)
        if proto == IPPROTO_ICMPV6:
            return self._icmp6(ip, payload)
        return self._drop("unsupported_protocol")

    def _reassembled(self, whole: bytearray, now: float) -> Output:
        """Run a reassembled datagram through the stack like any packet read from the TUN.

        What comes back rewritten in place lives in `whole`, not in the adapter's read
        buffer, so it is returned as packets of its own, fragmented to the MTU again.
        """
        out = self._receive_ip(memoryview(whole), now, False)
        if isinstance(out, memoryview | bytearray):
            return self.fragment(out)
        return out

    def fragment(self, packet: memoryview | bytearray) -> list[bytearray]:
        """`packet` as the packets to write to the TUN: itself, or fragments of the MTU
        (`mtu6` for IPv6).  Raises WireError for a packet that cannot be fragmented
        (one that already carries a Fragment header)."""
        mtu = self.mtu6 if packet[0] >> 4 == 6 else self.mtu
        if len(packet) <= mtu:
            return [packet if isinstance(packet, bytearray) else bytearray(packet)]
        fragments = fragment_ip(packet, mtu, self._rng.getrandbits(32))
        self.counters["fragmented_to_tun"] += 1
        return fragments

    def _drop(self, reason: str) -> Output:
        self.counters[reason] += 1
        return None

    # -- TCP: the NAT hairpin ------------------------------------------------------------

    def _tcp(
        self,
        ip: Ipv4Packet | Ipv6Packet,
        segment: memoryview,
        src: bytes,
        dst: bytes,
        nat: TcpNatTable,
        now: float,
        csum_partial: bool,
    ) -> Output:
        """`src`/`dst` are the packet's addresses, already read by the caller (one copy each)."""
        tcp = TcpPacket.checked(segment)
        sport = tcp.src_port
        if sport == nat.listen_port and src == nat.server_addr:
            # The kernel listener answering the hairpin: back to the app's view.
            session = nat.by_port(tcp.dst_port)
            if session is None or dst != nat.peer_addr:
                return self._drop("tcp_unknown_nat_port")
            return _rewrite(
                ip,
                tcp,
                session.dst_addr,
                session.client_addr,
                session.dst_port,
                session.client_port,
                session.l4_delta_in,
                session.ip_delta_in,
                csum_partial,
            )
        flags = tcp.flags
        key = (src, sport, dst, tcp.dst_port)
        session = nat.by_flow(key)
        if session is None or (session.state == CLOSING and flags & (SYN | ACK) == SYN):
            if flags & (SYN | ACK | RST) != SYN:
                if flags & RST:
                    return self._drop("tcp_no_session")
                self.counters["tcp_reset_unknown_flow"] += 1
                return self._reset_for(ip, tcp, len(segment))
            if not csum_partial and not tcp.verify_checksum(src, dst):
                # Checked once per new flow, so a corrupt SYN allocates no NAT entry; later
                # segments are left to the kernel, which verifies them on the hairpin.
                return self._drop("tcp_bad_checksum")
            try:
                session = nat.open(key, now)
            except NatExhausted:
                self.counters["tcp_nat_exhausted"] += 1
                return self._reset_for(ip, tcp, len(segment))
            if self.nat_observer is not None:
                # Before the SYN goes back: the listener's SYN-ACK must find the entry.
                self.nat_observer.installed(session)
        return _rewrite(
            ip,
            tcp,
            nat.peer_addr,
            nat.server_addr,
            session.nat_port,
            nat.listen_port,
            session.l4_delta_out,
            session.ip_delta_out,
            csum_partial,
        )

    def _tcp4_fast(self, packet: memoryview, csum_partial: bool) -> memoryview | None:
        """A segment of a flow the NAT already holds -- IPv4 without options, whole,
        unicast, header sum and data offset right -- rewritten with one unpack instead of
        header views: what bulk transfers and their ACKs are made of. None: anything else
        (new flows, strays, the malformed) for `_tcp` to handle and count as it always does.
        """
        nat = self.nat4
        if nat is None:
            return None
        total, frag, src, dst, sport, dport, offset, flags = _V4_TCP.unpack_from(packet)
        data_offset = offset >> _TCP_DATA_OFF_SHIFT
        if (
            not _V4_TCP_LEN <= total <= len(packet)
            or frag & _FRAGMENT_BITS
            or dst[0] >= 224
            or not _TCP_MIN_WORDS <= data_offset <= (total - _V4_HEADER_LEN) >> 2
            or int.from_bytes(packet[:_V4_HEADER_LEN], "big") % ONES_MOD
        ):
            return None
        if sport == nat.listen_port and src == nat.server_addr:
            session = nat.by_port(dport)
            if session is None or dst != nat.peer_addr:
                return None
            new_src, new_dst = session.dst_addr, session.client_addr
            new_sport, new_dport = session.dst_port, session.client_port
            l4_delta, ip_delta = session.l4_delta_in, session.ip_delta_in
        else:
            session = nat.by_flow((src, sport, dst, dport))
            if session is None or (session.state == CLOSING and flags & (SYN | ACK) == SYN):
                return None
            new_src, new_dst = nat.peer_addr, nat.server_addr
            new_sport, new_dport = session.nat_port, nat.listen_port
            l4_delta, ip_delta = session.l4_delta_out, session.ip_delta_out
        packet[_V4_SRC:_V4_DST] = new_src
        packet[_V4_DST:_V4_PORTS] = new_dst
        _PORTS.pack_into(packet, _V4_PORTS, new_sport, new_dport)
        (checksum,) = _U16.unpack_from(packet, _V4_TCP_CHECKSUM)
        if csum_partial:
            checksum = apply_partial_delta(checksum, ip_delta)
        else:
            checksum = apply_delta(checksum, l4_delta)
        _U16.pack_into(packet, _V4_TCP_CHECKSUM, checksum)
        (checksum,) = _U16.unpack_from(packet, _V4_CHECKSUM)
        _U16.pack_into(packet, _V4_CHECKSUM, apply_delta(checksum, ip_delta))
        return packet if total == len(packet) else packet[:total]  # as the general path

    def _reset_for(self, ip: Ipv4Packet | Ipv6Packet, tcp: TcpPacket, seg_len: int) -> bytearray:
        """RFC 793 reset generation for a segment that belongs to no connection."""
        if tcp.flags & ACK:
            seq, ack, flags = tcp.ack, 0, RST
        else:
            data_len = seg_len - tcp.header_len
            seq = 0
            ack = (tcp.seq + data_len + (1 if tcp.flags & SYN else 0)) & 0xFFFFFFFF
            flags = RST | ACK
        return build_tcp(
            ip.dst, ip.src, tcp.dst_port, tcp.src_port, seq=seq, ack=ack, flags=flags, window=0
        )

    def tcp_accepted(self, version: int, peer_addr: bytes, nat_port: int) -> TcpSession | None:
        """The listener accepted peer_addr:nat_port: which app flow is it?

        None unless it is the hairpin peer connecting for a flow that is still waiting
        (PENDING): anyone else reaching the listener -- another host, a local user who
        bound the same source port -- must never be handed a live flow's destination.
        """
        nat = self.nat4 if version == 4 else self.nat6
        session = nat.by_port(nat_port) if nat is not None else None
        if nat is None or session is None or peer_addr != nat.peer_addr or session.state != PENDING:
            self.counters["tcp_accept_unknown"] += 1
            return None
        nat.activate(session)
        return session

    def tcp_closed(self, session: TcpSession, now: float) -> None:
        nat = self.nat4 if session.version == 4 else self.nat6
        if nat is not None:
            nat.close(session, now)

    # -- UDP: sessions and datagram events -----------------------------------------------

    def _udp(
        self,
        version: int,
        src: bytes,
        dst: bytes,
        segment: memoryview,
        now: float,
        csum_partial: bool,
    ) -> Output:
        udp = UdpPacket.checked(segment)
        # RFC 1122 4.1.3.4: a datagram with a bad checksum is discarded, not relayed. An
        # offloaded frame's field is a partial sum (the kernel vouches for it), and zero
        # means "no checksum" over IPv4 -- verify_checksum knows both.
        if not csum_partial and not udp.verify_checksum(src, dst):
            return self._drop("udp_bad_checksum")
        session = self.udp.get_or_open(version, src, udp.src_port, now)
        return UdpDatagram(session, dst, udp.dst_port, bytes(udp.payload))

    def _udp4_fast(self, packet: memoryview, now: float, csum_partial: bool) -> UdpDatagram | None:
        """The common UDP packet -- IPv4 without options, whole, unicast, every length and
        checksum right -- read with one unpack instead of header views. None: anything
        else, for the general path to handle (and count) exactly as it always does."""
        total, frag, src, dst, sport, dport, length, checksum = _V4_UDP.unpack_from(packet)
        if (
            total > len(packet)
            or frag & _FRAGMENT_BITS
            or dst[0] >= 224
            or not _UDP_HEADER_LEN <= length <= total - _V4_HEADER_LEN
            # The header's ones' sum is 0xffff (-0): the integer is 0 mod 0xffff.
            or int.from_bytes(packet[:_V4_HEADER_LEN], "big") % ONES_MOD
        ):
            return None
        end = _V4_HEADER_LEN + length
        if (
            not csum_partial
            and checksum
            and ones_sum(
                packet[_V4_HEADER_LEN:end], pseudo_header_sum(src, dst, IPPROTO_UDP, length)
            )
            != ONES_MOD
        ):
            return None
        session = self.udp.get_or_open(4, src, sport, now)
        return UdpDatagram(session, dst, dport, bytes(packet[_V4_UDP_LEN:end]))

    def udp_reply(
        self, session: UdpSession, src_addr: bytes, src_port: int, payload: bytes, now: float
    ) -> bytearray:
        """An IP/UDP packet carrying a datagram from src_addr:src_port back to the app."""
        self.udp.touch(session, now)
        return build_udp(src_addr, session.client_addr, src_port, session.client_port, payload)

    def udp_unreachable(self, datagram: UdpDatagram, *, code: int | None = None) -> bytearray:
        """ICMP port unreachable for a datagram that was rejected (what a closed port says)."""
        s = datagram.session
        original = build_udp(
            s.client_addr, datagram.dst_addr, s.client_port, datagram.dst_port, datagram.payload
        )
        if code is None:
            code = 3 if s.version == 4 else 4  # port unreachable (ICMP / ICMPv6)
        return build_icmp_unreachable(original, datagram.dst_addr, code=code)

    # -- ICMP echo, answered in place ----------------------------------------------------

    def _icmp4(self, ip: Ipv4Packet) -> Output:
        icmp = IcmpPacket.checked(ip.payload)
        if icmp.type != ICMP_ECHO_REQUEST:
            return self._drop("icmp_not_echo")
        if not icmp.verify_checksum():
            return self._drop("icmp_bad_checksum")
        if self.icmp is not IcmpMode.LOCAL:
            return self._echo_elsewhere(ip, icmp, 4)
        src, dst = ip.src, ip.dst
        ip.src, ip.dst = dst, src  # a swap leaves the header sum unchanged
        icmp.type = ICMP_ECHO_REPLY
        # adjust_checksum, not a bare RFC 1624 update: an all-zero reply must carry 0xffff.
        icmp.adjust_checksum(_ECHO_DELTA_V4)
        ip.ttl = REPLY_HOP_LIMIT
        ip.fill_checksum()
        self.counters["icmp_echo_answered"] += 1
        return ip.buf

    def _icmp6(self, ip: Ipv6Packet, message: memoryview) -> Output:
        icmp = Icmpv6Packet.checked(message)
        if icmp.type != ICMPV6_ECHO_REQUEST:
            return self._drop("icmpv6_not_echo")
        src, dst = ip.src, ip.dst
        if not icmp.verify_checksum(src, dst):
            return self._drop("icmp_bad_checksum")
        if self.icmp is not IcmpMode.LOCAL:
            return self._echo_elsewhere(ip, icmp, 6)
        ip.src, ip.dst = dst, src  # the pseudo-header sum does not change with the swap
        icmp.type = ICMPV6_ECHO_REPLY
        icmp.adjust_checksum(_ECHO_DELTA_V6)
        ip.hop_limit = REPLY_HOP_LIMIT
        self.counters["icmp_echo_answered"] += 1
        return ip.buf

    def _echo_elsewhere(
        self, ip: Ipv4Packet | Ipv6Packet, icmp: IcmpPacket | Icmpv6Packet, version: int
    ) -> Output:
        """`--icmp reject`: refuse it; `--icmp direct`: hand it to the engine to send."""
        if self.icmp is IcmpMode.REJECT:
            self.counters["icmp_echo_rejected"] += 1
            return prohibited(ip.buf, ip.dst)
        return IcmpEchoRequest(version, ip.src, ip.dst, icmp.ident, icmp.seq, bytes(icmp.data))

    def echo_failed(self, request: IcmpEchoRequest, code: int) -> bytearray:
        """Destination unreachable with `code` for a forwarded echo request the network
        refused at once (no route: what the app's own host would have said)."""
        original = build_icmp_echo(
            request.src, request.dst, request.ident, request.seq, request.payload
        )
        return build_icmp_unreachable(original, request.dst, code=code)

    # -- time ----------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[StackEvent]:
        """Expire what is due at `now`. The adapter calls it on a coarse tick (1 s): every
        timeout here is tens of seconds, so finer timers would only cost wake-ups."""
        events: list[StackEvent] = []
        observer = self.nat_observer
        for nat in (self.nat4, self.nat6):
            if nat is not None:
                for session in nat.expire(now):
                    if observer is not None:
                        observer.removed(session)
                    events.append(TcpSessionExpired(session))
        events.extend(UdpSessionExpired(s) for s in self.udp.expire(now))
        self.reassembly.on_timer(now)
        return events

    def set_listen_port(self, version: int, port: int) -> None:
        """Set once the kernel listener is bound (port 0 means 'let the kernel pick')."""
        nat = self.nat4 if version == 4 else self.nat6
        if nat is not None:
            nat.listen_port = port
