"""A small DNS answer cache that honours TTLs (RFC 1035 3.2.1, RFC 2308 for negatives).

Keyed by (name, type, class).  An entry lives for the smallest TTL of its answer records,
clamped to ``[min_ttl, max_ttl]``; a negative answer (NXDOMAIN or NODATA) lives for its SOA's
``min(ttl, minimum)`` capped at ``max_negative_ttl``, and is not cached without an SOA (RFC
2308 5).  Served copies carry the *remaining* TTL, never the original one, so downstream
caches do not extend a record's life.  SERVFAIL and friends are never cached.  Time is an
argument: the cache owns no clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_TTL = 86400
DEFAULT_MAX_NEGATIVE_TTL = 300
_OPT = QTYPE.OPT  # EDNS pseudo-record: its "ttl" holds flags, not a lifetime

CacheKey = tuple[str, int, int]


def cache_key(record: DNSRecord) -> CacheKey | None:
    """The key of a single-question message; None for anything else (not cacheable)."""
    if len(record.questions) != 1:
        return None
    q = record.q
    return (str(q.qname).rstrip(".").lower(), int(q.qtype), int(q.qclass))


@dataclass(slots=True)
class _Entry:
    wire: bytes
    stored_at: float
    ttl: int


def _lifetime(reply: DNSRecord) -> int | None:
    rcode = reply.header.rcode
    if rcode == RCODE.NOERROR and reply.rr:
        return int(min(rr.ttl for rr in reply.rr))
    if rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
        soas = [rr for rr in reply.auth if rr.rtype == QTYPE.SOA]
        if not soas:
            return None
        soa = soas[0]
        return -int(min(soa.ttl, soa.rdata.times[-1]))  # negative marks "negative answer"
    return None


class DnsCache:
    """LRU-bounded TTL cache of whole replies."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        min_ttl: int = 0,
        max_ttl: int = DEFAULT_MAX_TTL,
        max_negative_ttl: int = DEFAULT_MAX_NEGATIVE_TTL,
    ) -> None:
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: CacheKey, reply: DNSRecord, now: float) -> int:
        """Store ``reply`` if cacheable; the lifetime granted in seconds (0: not stored)."""
        raw = _lifetime(reply)
        if raw is None:
            return 0
        if raw < 0:
            ttl = min(-raw, self.max_negative_ttl)
        else:
            ttl = max(self.min_ttl, min(raw, self.max_ttl))
        if ttl <= 0:
            return 0
        self._entries[key] = _Entry(reply.pack(), now, ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return ttl

    def get(self, key: CacheKey, now: float) -> DNSRecord | None:
        """A fresh copy of the cached reply with TTLs reduced by its age, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        elapsed = now - entry.stored_at
        if elapsed >= entry.ttl or elapsed < 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        age = math.ceil(elapsed)  # round the age up: never serve a longer life than is left
        record = DNSRecord.parse(entry.wire)
        for rr in (*record.rr, *record.auth, *record.ar):
            if rr.rtype != _OPT:
                rr.ttl = max(0, min(rr.ttl, entry.ttl) - age)
        return record
