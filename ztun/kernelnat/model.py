"""The kernel NAT's rewrite in Python: what the tc program does to one packet.

Two jobs. `entries_for` derives a flow's two map entries from the stack's NAT session
(the same addresses, ports and `checksum_delta` the stack's own rewrite uses), so the
kernel rewrites exactly as `SystemStack.receive` would. `run` is the program as a
function of the packet and the maps -- verdict, bytes after, counters -- the reference
the assembled program is held to with BPF_PROG_TEST_RUN; its checksum arithmetic is the
kernel helpers' (include/net/checksum.h, net/core/utils.c) to the bit, native byte
order included.

What the program takes, rule by rule (anything else is TC_ACT_OK: the packet goes on to
the TUN and ztun's stack handles it as before):

1. IPv4 with no options (first byte 0x45), not a fragment, TCP, total length equal to
   the packet's; or IPv6 whose next header is TCP (no extension headers), payload
   length equal to the packet's. Both with a whole TCP header in the linear data.
2. Not a SYN without ACK: a new flow's first segment is ztun's (it allocates the NAT
   port; a SYN on a lingering flow opens a new one), and so are its retransmissions.
3. A data offset of at least 5 words that fits the segment.
4. (source, destination, ports) is a key of the flow map.

Then: the transport checksum gets the addresses' difference as a pseudo-header update
and the ports' as a plain one (on a CHECKSUM_PARTIAL skb the field holds the
pseudo-header sum only, and the kernel helper skips the plain update: the ports are
summed later); IPv4's header checksum gets the addresses' difference; the new
addresses and ports are stored; the entry's counters go up by one packet and the TCP
payload; the packet is redirected into the TUN's receive path (TC_ACT_REDIRECT).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ..stack.events import TcpSession
from ..stack.nat import TcpNatTable
from ..wire.checksum import checksum_delta
from .layout import (
    IP4_CSUM,
    IP4_FRAG,
    IP4_FRAGMENT_BITS,
    IP4_HEADER,
    IP4_KEY,
    IP4_PROTO,
    IP4_TOTAL_LEN,
    IP4_VER_IHL_PLAIN,
    IP6_HEADER,
    IP6_KEY,
    IP6_NEXT_HEADER,
    IP6_PAYLOAD_LEN,
    IPPROTO_TCP,
    KEY4_LEN,
    KEY6_LEN,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TCP_ACK,
    TCP_CSUM,
    TCP_DATA_OFFSET,
    TCP_FLAGS,
    TCP_HEADER,
    TCP_SYN,
    native_diff,
)

__all__ = ["FlowEntry", "Verdict", "entries_for", "flow_key", "run"]

_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """One direction of one flow: the bytes that replace the packet's addresses and
    ports, and the checksum differences of that replacement (native `__wsum`s)."""

    rewrite: bytes
    addr_diff: int
    port_diff: int

    @classmethod
    def between(cls, old: bytes, new: bytes) -> FlowEntry:
        """The entry that turns the key `old` into `new` (both addresses + ports)."""
        if len(old) != len(new) or len(old) not in (KEY4_LEN, KEY6_LEN):
            raise ValueError(f"flow keys of {KEY4_LEN} or {KEY6_LEN} bytes expected")
        addrs = len(old) - _PORTS.size
        return cls(
            new,
            native_diff(checksum_delta(old[:addrs], new[:addrs])),
            native_diff(checksum_delta(old[addrs:], new[addrs:])),
        )


def flow_key(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """A packet's key as the program reads it: addresses then ports, as on the wire."""
    return src + dst + _PORTS.pack(sport, dport)


def entries_for(session: TcpSession, nat: TcpNatTable) -> tuple[tuple[bytes, FlowEntry], ...]:
    """The map entries of one NAT session: the app's direction (onto the hairpin, to
    the listener) and the listener's answers (back to the app's view) -- the two
    rewrites of `SystemStack._tcp`."""
    app = flow_key(session.client_addr, session.dst_addr, session.client_port, session.dst_port)
    hairpin = flow_key(nat.peer_addr, nat.server_addr, session.nat_port, nat.listen_port)
    answer = flow_key(nat.server_addr, nat.peer_addr, nat.listen_port, session.nat_port)
    back = flow_key(session.dst_addr, session.client_addr, session.dst_port, session.client_port)
    return ((app, FlowEntry.between(app, hairpin)), (answer, FlowEntry.between(answer, back)))


# --------------------------------------------------------------------------- checksums


def _csum_add(a: int, b: int) -> int:
    """csum_add: 32-bit addition with end-around carry."""
    total = (a + b) & _MASK32
    return (total + (total < b)) & _MASK32


def _csum_fold(wsum: int) -> int:
    """csum_fold: the 32-bit sum folded to 16 bits, complemented."""
    wsum = (wsum & 0xFFFF) + (wsum >> 16)
    wsum = (wsum & 0xFFFF) + (wsum >> 16)
    return ~wsum & 0xFFFF


def _replace_by_diff(field: int, diff: int) -> int:
    """csum_replace_by_diff: a finished checksum field after data changed by `diff`."""
    return _csum_fold(_csum_add(diff, ~field & _MASK32))


def _partial_by_diff(field: int, diff: int) -> int:
    """inet_proto_csum_replace_by_diff on CHECKSUM_PARTIAL with a pseudo-header diff:
    the field holds the uncomplemented pseudo-header sum."""
    return ~_csum_fold(_csum_add(diff, field)) & 0xFFFF


def _update(packet: bytearray, offset: int, fix: int) -> None:
    packet[offset : offset + 2] = fix.to_bytes(2, sys.byteorder)


def _field(packet: bytearray, offset: int) -> int:
    return int.from_bytes(packet[offset : offset + 2], sys.byteorder)


# --------------------------------------------------------------------------- the program


@dataclass(frozen=True, slots=True)
class Verdict:
    """The program's return value, the packet after it, and which entry's counters went
    up by one packet and `payload` bytes (None when the packet was not taken)."""

    action: int
    packet: bytes
    key: bytes | None = None
    payload: int = 0


def _pass(packet: bytes | bytearray) -> Verdict:
    return Verdict(TC_ACT_OK, bytes(packet))


def run(
    packet: bytes | bytearray | memoryview,
    flows: Mapping[bytes, FlowEntry],
    *,
    csum_partial: bool = False,
) -> Verdict:
    """What the program does to `packet` (an IP packet, as on the TUN) given the flow
    maps (`flows`: IPv4 and IPv6 keys together; their lengths tell them apart).
    `csum_partial`: the skb is CHECKSUM_PARTIAL (what the kernel's own TCP sends)."""
    pkt = bytearray(packet)
    if len(pkt) < IP4_HEADER + TCP_HEADER:
        return _pass(pkt)
    if pkt[0] == IP4_VER_IHL_PLAIN:
        key_at, l4, version = IP4_KEY, IP4_HEADER, 4
        if (
            pkt[IP4_PROTO] != IPPROTO_TCP
            or _U16.unpack_from(pkt, IP4_FRAG)[0] & IP4_FRAGMENT_BITS
            or _U16.unpack_from(pkt, IP4_TOTAL_LEN)[0] != len(pkt)
        ):
            return _pass(pkt)
        key = bytes(pkt[key_at : key_at + KEY4_LEN])
    elif pkt[0] >> 4 == 6:
        key_at, l4, version = IP6_KEY, IP6_HEADER, 6
        if (
            len(pkt) < IP6_HEADER + TCP_HEADER
            or pkt[IP6_NEXT_HEADER] != IPPROTO_TCP
            or _U16.unpack_from(pkt, IP6_PAYLOAD_LEN)[0] + IP6_HEADER != len(pkt)
        ):
            return _pass(pkt)
        key = bytes(pkt[key_at : key_at + KEY6_LEN])
    else:
        return _pass(pkt)
    if pkt[l4 + TCP_FLAGS] & (TCP_SYN | TCP_ACK) == TCP_SYN:
        return _pass(pkt)
    header = (pkt[l4 + TCP_DATA_OFFSET] >> 4) * 4
    if header < TCP_HEADER or header > len(pkt) - l4:
        return _pass(pkt)
    entry = flows.get(key)
    if entry is None:
        return _pass(pkt)
    csum = l4 + TCP_CSUM
    if csum_partial:
        _update(pkt, csum, _partial_by_diff(_field(pkt, csum), entry.addr_diff))
    else:
        _update(pkt, csum, _replace_by_diff(_field(pkt, csum), entry.addr_diff))
        _update(pkt, csum, _replace_by_diff(_field(pkt, csum), entry.port_diff))
    if version == 4:
        _update(pkt, IP4_CSUM, _replace_by_diff(_field(pkt, IP4_CSUM), entry.addr_diff))
    pkt[key_at : key_at + len(key)] = entry.rewrite
    return Verdict(TC_ACT_REDIRECT, bytes(pkt), key, len(pkt) - l4 - header)
