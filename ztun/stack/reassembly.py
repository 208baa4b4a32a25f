"""IP reassembly before the stack (RFC 791 sec. 3.2, RFC 8200 sec. 4.5), sans-IO.

An app's datagram larger than the TUN's MTU reaches ztun as fragments (the kernel
fragments before the TUN); the stack sees only whole datagrams. Fragments are held per
datagram -- IPv4 by (source, destination, protocol, identification), IPv6 by (source,
destination, identification) -- until every byte is there.

What it refuses, each counted under its own `fragment_*` reason:

* overlapping fragments: the whole datagram is discarded, and fragments of it that come
  later too (RFC 5722 for IPv6; the same for IPv4, as Linux does since 2018: an overlap
  is how a filter is evaded, RFC 1858). An exact duplicate (a retransmitted fragment) is
  dropped alone (`fragment_duplicate`).
* a first fragment too short to hold the upper-layer header (RFC 7112 for IPv6, RFC 1858
  "tiny fragments" for IPv4): `fragment_tiny`.
* a fragment that is not the last and whose length is not a multiple of 8, or one that
  would grow the datagram past 65535 bytes: `fragment_bad_length`, `fragment_too_big`.
* two last fragments that disagree, or data past the last fragment's end:
  `fragment_inconsistent`.
* memory: at most `max_bytes_per_source` held for one source address (the datagram that
  would pass it is discarded: `fragment_source_limit`), at most `max_bytes` in total (the
  oldest datagrams are evicted to make room: `fragment_evicted`), at most
  `max_datagrams` in reassembly (the oldest is evicted).
* time: a datagram not complete `timeout` seconds after its first fragment is discarded
  (`fragment_timeout`; RFC 8200 says 60 s, RFC 791 leaves it to the host, Linux waits 30).

An IPv6 atomic fragment (offset 0, M clear: RFC 6946) never reaches this module: it is a
whole datagram, processed apart from any reassembly. `fragment_reassembled` counts the
datagrams handed on.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ..wire import Ipv4Packet, Ipv6Packet
from ..wire.ipv6 import Ipv6Fragment

__all__ = ["Reassembler"]

IPV4, IPV6 = 4, 6
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
_U16 = struct.Struct("!H")
_UNIT = 8
# The largest fragmentable part: IPv4's total length (a 20-byte header at least) and
# IPv6's payload length are 16-bit fields. Past it is the "ping of death".
_MAX_END = {4: 0xFFFF - 20, 6: 0xFFFF}
#: What holding one piece costs beyond its bytes (the bytes object, the list slots), so
#: a flood of 8-byte fragments is charged for what it really takes.
PIECE_OVERHEAD = 64
#: Bytes of the upper-layer header the first fragment must hold (RFC 7112: the whole
#: header chain; RFC 1858: at least the ports, for IPv4 all a 68-byte MTU leaves room for).
_UPPER_HEADER_V6 = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_ICMPV6: 8}
_UPPER_HEADER_V4 = 8
_IPV4_TOTAL_LEN, _IPV4_FLAGS_FRAG, _IPV4_CHECKSUM = 2, 6, 10
_IPV6_PAYLOAD_LEN = 4

Key = tuple[int, bytes, bytes, int, int]  # version, src, dst, protocol (v4) or 0, ident


@dataclass(slots=True)
class _Datagram:
    source: bytes
    deadline: float
    # Sorted by start; pieces never overlap (an overlap discards the datagram).
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    header: bytes | None = None  # IPv4 header / IPv6 unfragmentable part, from offset 0
    link_offset: int = 0  # IPv6: the Next Header byte naming the Fragment header
    next_header: int = 0  # IPv6: the Fragment header's Next Header
    total: int | None = None  # payload length, known once the last fragment came
    held: int = 0  # bytes charged against the memory limits
    received: int = 0  # data bytes held


class Reassembler:
    """Holds fragments until their datagram is whole; `ipv4`/`ipv6` return it then."""

    def __init__(
        self,
        counters: Counter[str],
        *,
        timeout: float = 30.0,
        max_bytes: int = 4 << 20,
        max_bytes_per_source: int = 1 << 20,
        max_datagrams: int = 1024,
    ) -> None:
        self.counters = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_bytes_per_source = max_bytes_per_source
        self.max_datagrams = max_datagrams
        self._datagrams: OrderedDict[Key, _Datagram] = OrderedDict()  # oldest first
        # Datagrams discarded for an overlap, until their deadline: later fragments of
        # them are discarded too (RFC 5722).
        self._discarded: OrderedDict[Key, float] = OrderedDict()
        self._held = 0
        self._held_by_source: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return len(self._datagrams)

    @property
    def held_bytes(self) -> int:
        return self._held

    # -- fragments in ----------------------------------------------------------------------

    def ipv4(self, ip: Ipv4Packet, now: float) -> bytearray | None:
        """A checked IPv4 fragment (header checksum already verified); the whole datagram
        once this completes it, else None."""
        key: Key = (IPV4, ip.src, ip.dst, ip.protocol, ip.ident)
        offset = ip.frag_offset
        data = ip.payload
        header = None
        if offset == 0:
            if len(data) < _UPPER_HEADER_V4:
                self._refuse(key, "fragment_tiny")
                return None
            header = bytes(ip.buf[: ip.header_len])
        return self._add(key, ip.src, offset, ip.more_frags, data, header, 0, 0, now)

    def ipv6(self, ip: Ipv6Packet, frag: Ipv6Fragment, now: float) -> bytearray | None:
        """A checked IPv6 fragment (not atomic) with its Fragment header; the whole
        datagram once this completes it, else None."""
        key: Key = (IPV6, ip.src, ip.dst, 0, frag.ident)
        data = ip.buf[frag.data_offset :]
        header = None
        if frag.frag_offset == 0:
            need = _UPPER_HEADER_V6.get(frag.upper_protocol, 0)
            if frag.upper_offset + need > len(ip.buf):
                self._refuse(key, "fragment_tiny")
                return None
            header = bytes(ip.buf[: frag.header_offset])
        return self._add(
            key,
            ip.src,
            frag.frag_offset,
            frag.more_frags,
            data,
            header,
            frag.link_offset,
            frag.next_header,
            now,
        )

    def _add(
        self,
        key: Key,
        source: bytes,
        start: int,
        more: bool,
        data: memoryview,
        header: bytes | None,
        link_offset: int,
        next_header: int,
        now: float,
    ) -> bytearray | None:
        if key in self._discarded:
            self.counters["fragment_of_discarded"] += 1
            return None
        end = start + len(data)
        if not data or (more and len(data) % _UNIT):
            self._refuse(key, "fragment_bad_length")
            return None
        if end > _MAX_END[key[0]]:
            self._refuse(key, "fragment_too_big")
            return None
        datagram = self._datagrams.get(key)
        if datagram is None:
            datagram = _Datagram(source, now + self.timeout)
            self._datagrams[key] = datagram
        starts = datagram.starts
        at = bisect.bisect_left(starts, start)
        if (
            at < len(starts)
            and starts[at] == start
            and datagram.ends[at] == end
            and datagram.data[at] == data
        ):
            self.counters["fragment_duplicate"] += 1
            return None
        if (at < len(starts) and starts[at] < end) or (at and datagram.ends[at - 1] > start):
            self._discard(key, datagram, "fragment_overlap")
            return None
        if not more:
            if datagram.total is not None and datagram.total != end:
                self._discard(key, datagram, "fragment_inconsistent")
                return None
            datagram.total = end
        total = datagram.total
        if total is not None and (end > total or (starts and datagram.ends[-1] > total)):
            self._discard(key, datagram, "fragment_inconsistent")
            return None
        cost = len(data) + PIECE_OVERHEAD + (len(header) if header is not None else 0)
        if self._held_by_source[source] + cost > self.max_bytes_per_source:
            self._discard(key, datagram, "fragment_source_limit")
            return None
        self._make_room(key, cost)
        starts.insert(at, start)
        datagram.ends.insert(at, end)
        datagram.data.insert(at, bytes(data))
        if header is not None:
            datagram.header = header
            datagram.link_offset = link_offset
            datagram.next_header = next_header
        datagram.held += cost
        datagram.received += len(data)
        self._held += cost
        self._held_by_source[source] += cost
        if datagram.total is None or datagram.received != datagram.total:
            return None
        # Every byte is there: pieces do not overlap, so their lengths sum to the total
        # only when they cover it exactly. The first fragment (offset 0) must be one.
        self._forget(key, datagram)
        whole = _join(key[0], datagram)
        if whole is None:
            self.counters["fragment_too_big"] += 1
            return None
        self.counters["fragment_reassembled"] += 1
        return whole

    def _refuse(self, key: Key, reason: str) -> None:
        """Count a fragment that cannot be used; the datagram it belongs to cannot
        complete without it, so that goes too."""
        self.counters[reason] += 1
        datagram = self._datagrams.get(key)
        if datagram is not None:
            self._forget(key, datagram)

    def _discard(self, key: Key, datagram: _Datagram, reason: str) -> None:
        self.counters[reason] += 1
        self._forget(key, datagram)
        if reason == "fragment_overlap":
            while len(self._discarded) >= self.max_datagrams:
                self._discarded.popitem(last=False)
            self._discarded[key] = datagram.deadline

    def _make_room(self, keep: Key, cost: int) -> None:
        """Evict the oldest datagrams (never `keep`) until `cost` more bytes fit."""
        datagrams = self._datagrams
        while self._held + cost > self.max_bytes or len(datagrams) > self.max_datagrams:
            victim = next((k for k in datagrams if k != keep), None)
            if victim is None:
                return  # only the one being built: it may use all of max_bytes
            self.counters["fragment_evicted"] += 1
            self._forget(victim, datagrams[victim])

    def _forget(self, key: Key, datagram: _Datagram) -> None:
        del self._datagrams[key]
        self._held -= datagram.held
        left = self._held_by_source[datagram.source] - datagram.held
        if left > 0:
            self._held_by_source[datagram.source] = left
        else:
            del self._held_by_source[datagram.source]

    # -- time ------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When the oldest datagram expires (None: nothing held)."""
        deadlines = [d.deadline for d in self._datagrams.values()]
        deadlines.extend(self._discarded.values())
        return min(deadlines, default=None)

    def on_timer(self, now: float) -> None:
        """Discard datagrams still incomplete at their deadline."""
        # Deadlines grow with insertion order (now + a fixed timeout), so the expired
        # ones are at the front of each ordered dict.
        datagrams = self._datagrams
        while datagrams:
            key, datagram = next(iter(datagrams.items()))
            if datagram.deadline > now:
                break
            self.counters["fragment_timeout"] += 1
            self._forget(key, datagram)
        discarded = self._discarded
        while discarded:
            key, deadline = next(iter(discarded.items()))
            if deadline > now:
                break
            del discarded[key]


def _join(version: int, datagram: _Datagram) -> bytearray | None:
    """The whole datagram: the first fragment's header, then every piece in order
    (None: with its header it would not fit the length field)."""
    header = datagram.header
    assert header is not None and datagram.total is not None  # offset 0 and the end came
    if len(header) + datagram.total > (0xFFFF if version == IPV4 else 0xFFFF + 40):
        return None
    out = bytearray(header)
    for piece in datagram.data:
        out += piece
    if version == IPV4:
        _U16.pack_into(out, _IPV4_TOTAL_LEN, len(out))
        _U16.pack_into(out, _IPV4_FLAGS_FRAG, 0)
        Ipv4Packet(out).fill_checksum()
    else:
        # RFC 8200 sec. 4.5: the Next Header of the last unfragmentable header takes the
        # Fragment header's; the Payload Length covers what is there now.
        out[datagram.link_offset] = datagram.next_header
        _U16.pack_into(out, _IPV6_PAYLOAD_LEN, len(out) - 40)
    return out
