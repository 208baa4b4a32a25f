"""Answer DNS queries that arrive on the TUN (port 53 to any address): sans-IO.

Modes (``--dns``):

``fake-ip``
    A/AAAA are answered at once from the :class:`FakeIpPool` with a short TTL; the
    connection that follows carries the domain to the proxy (remote resolution).  PTR for a
    fake address answers the domain.  HTTPS/SVCB (types 65/64) get an empty NOERROR: their
    ``ipv4hint``/``ipv6hint`` would hand browsers real addresses and bypass the pool.  Other
    types get an empty NOERROR, or are forwarded when ``forward_other`` is set.  An app's
    DNS over TCP to port 53 is answered the same way (``handle_query(tcp=True)``: whole,
    never TC=1; ``DnsService.answers_tcp``), or its resolver would give real addresses.
``hijack``
    Every query is sent over TCP through the proxy to the server the client asked
    (``Forward.server is None``), so answers are real but nothing leaves outside the tunnel.
``remote``
    Like ``hijack``, but always to the configured ``upstream`` resolver; so is an app's
    DNS over TCP to port 53 (its retry after a TC=1 answer: ``DnsService.tcp_upstream``).

The handler never touches a socket: ``handle_query`` returns an :class:`Answer` (bytes to
send back to the client), a :class:`Forward` (framed bytes to write to an upstream TCP
stream) or a :class:`Drop`; replies read from that stream go to ``handle_reply``;
``expire(now)`` turns upstream timeouts into SERVFAIL answers.  Time is always an argument.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import AAAA, EDNS0, PTR, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSRecord

from ztun.dns.cache import CacheKey, DnsCache, cache_key
from ztun.dns.fakeip import FakeIpPool, normalize_domain
from ztun.dns.framing import MAX_MESSAGE, frame
from ztun.dns.mode import DEFAULT_FAKE_TTL, UPSTREAM_TIMEOUT, DnsMode

__all__ = ["DEFAULT_FAKE_TTL", "UPSTREAM_TIMEOUT", "DnsMode"]  # re-exported: old import paths

MAX_PENDING = 1024  # forwarded queries in flight; more are answered SERVFAIL at once
CLASSIC_UDP_LIMIT = 512  # RFC 1035 4.2.1, when the client sent no EDNS0 OPT
HEADER_LEN = 12
FAKE_IP_BYPASS = ("localhost", "local")  # names that must never get a fake address
_NO_FAKE_TYPES = frozenset({QTYPE.HTTPS, QTYPE.SVCB})


@dataclass(frozen=True, slots=True)
class Answer:
    """Send ``payload`` back to the client as the UDP reply."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    """Nothing sensible to answer (too short to even echo an ID)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Write ``wire`` (framed, upstream ID set) to a TCP stream to ``server`` via the proxy.

    ``server`` None means the address the client sent the query to (hijack mode).
    """

    wire: bytes
    upstream_id: int
    query: bytes
    key: CacheKey
    udp_limit: int
    server: tuple[str, int] | None
    sent_at: float
    tcp: bool = False  # the client asked over TCP: its answer is not cut to `udp_limit`


QueryResult = Answer | Forward | Drop


def _udp_limit(query: DNSRecord) -> int:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return max(CLASSIC_UDP_LIMIT, min(int(rr.rclass), 0xFFFF))
    return CLASSIC_UDP_LIMIT


def fit_udp(reply: DNSRecord, limit: int) -> bytes:
    """``reply`` packed, or, if larger than ``limit``, an empty TC=1 reply (RFC 2181 9)
    keeping the question and the OPT record, so the client retries over TCP."""
    wire = bytes(reply.pack())
    if len(wire) <= limit:
        return wire
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1)
    short = DNSRecord(header, questions=list(reply.questions))
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            short.add_ar(rr)
    return bytes(short.pack())


def _error_reply(payload: bytes, rcode: int) -> bytes:
    """A header-only error answer echoing the query ID (works on unparseable queries)."""
    ident = int.from_bytes(payload[:2], "big")
    rd = payload[2] & 0x01
    return bytes(DNSRecord(DNSHeader(id=ident, qr=1, rd=rd, ra=1, rcode=rcode)).pack())


def reverse_pointer_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a PTR name (``4.3.2.1.in-addr.arpa`` / nibbles ``.ip6.arpa``) is for."""
    labels = name.rstrip(".").lower().split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        return None
    return None


class DnsHandler:
    """The DNS core: queries in, answers or upstream requests out."""

    def __init__(
        self,
        mode: DnsMode,
        *,
        pool: FakeIpPool | None = None,
        cache: DnsCache | None = None,
        upstream: tuple[str, int] | None = None,
        fake_ttl: int = DEFAULT_FAKE_TTL,
        forward_other: bool = False,
        id_source: Callable[[], int] = lambda: secrets.randbits(16),
    ) -> None:
        if mode is DnsMode.OFF:
            raise ValueError("DnsHandler is for the hijack, fake-ip and remote modes")
        if mode is DnsMode.FAKE_IP and pool is None:
            raise ValueError("fake-ip mode needs a FakeIpPool")
        if mode is DnsMode.REMOTE and upstream is None:
            raise ValueError("remote mode needs an upstream resolver")
        self.mode = mode
        self.pool = pool
        self.cache = cache if cache is not None else DnsCache()
        self.upstream = upstream
        self.fake_ttl = fake_ttl
        self.forward_other = forward_other
        self._next_id = id_source
        self._pending: dict[int, Forward] = {}

    # -- queries ----------------------------------------------------------------------

    def handle_query(self, payload: bytes, now: float, *, tcp: bool = False) -> QueryResult:
        """What to do with one query received on the TUN: a datagram, or a message of an
        app's DNS over TCP (`tcp`: answers are whole, never TC=1)."""
        if len(payload) < HEADER_LEN:
            return Drop("shorter than a DNS header")
        if payload[2] & 0x80:
            return Drop("a response, not a query")
        try:
            query = DNSRecord.parse(payload)
        except (DNSError, ValueError, IndexError):
            return Answer(_error_reply(payload, RCODE.FORMERR))
        if query.header.opcode != 0:  # only QUERY; NOTIFY/UPDATE are not for us
            return Answer(_error_reply(payload, RCODE.NOTIMP))
        key = cache_key(query)
        if key is None:
            return Answer(_error_reply(payload, RCODE.FORMERR))
        if self.mode is DnsMode.FAKE_IP:
            answer = self._fake(query, key)
            if answer is not None:
                return Answer(fit_udp(answer, MAX_MESSAGE if tcp else _udp_limit(query)))
        return self._resolve(query, payload, key, now, tcp)

    def _fake(self, query: DNSRecord, key: CacheKey) -> DNSRecord | None:
        """The fake-IP answer, or None when the query should be forwarded instead."""
        assert self.pool is not None
        name, qtype, _ = key
        reply = query.reply(ra=1, aa=0)
        if qtype == QTYPE.PTR:
            addr = reverse_pointer_address(name)
            if addr is not None and self.pool.is_fake(addr):
                domain = self.pool.domain_for(addr)
                if domain is None:
                    reply.header.rcode = RCODE.NXDOMAIN
                else:
                    reply.add_answer(
                        RR(query.q.qname, QTYPE.PTR, rdata=PTR(domain + "."), ttl=self.fake_ttl)
                    )
                return reply
        bypass = any(name == s or name.endswith("." + s) for s in FAKE_IP_BYPASS)
        if qtype in (QTYPE.A, QTYPE.AAAA) and not bypass:
            version = 4 if qtype == QTYPE.A else 6
            try:
                addr = self.pool.allocate(normalize_domain(name), version)
            except ValueError:
                reply.header.rcode = RCODE.FORMERR
                return reply
            if addr is not None:
                rdata = A(str(addr)) if version == 4 else AAAA(str(addr))
                reply.add_answer(RR(query.q.qname, qtype, rdata=rdata, ttl=self.fake_ttl))
            return reply
        if qtype in _NO_FAKE_TYPES or not self.forward_other:
            return reply  # NOERROR, no data
        return None

    def _resolve(
        self, query: DNSRecord, payload: bytes, key: CacheKey, now: float, tcp: bool
    ) -> QueryResult:
        limit = _udp_limit(query)
        cached = self.cache.get(key, now)
        if cached is not None:
            cached.header.id = query.header.id
            cached.questions = list(query.questions)  # the client's spelling (0x20 case)
            if limit == CLASSIC_UDP_LIMIT:  # client sent no OPT: answer without one
                cached.ar = [rr for rr in cached.ar if rr.rtype != QTYPE.OPT]
            return Answer(fit_udp(cached, MAX_MESSAGE if tcp else limit))
        if len(self._pending) >= MAX_PENDING:
            return Answer(_error_reply(payload, RCODE.SERVFAIL))
        upstream_id = self._fresh_id()
        upstream_query = bytearray(payload)
        upstream_query[:2] = upstream_id.to_bytes(2, "big")
        if limit == CLASSIC_UDP_LIMIT:
            # Over TCP size is no issue; ask with EDNS0 so large answers come whole and
            # are cached whole (the client still gets at most 512 bytes, TC=1 beyond).
            upgraded = DNSRecord.parse(bytes(upstream_query))
            upgraded.add_ar(EDNS0(udp_len=1232))
            upstream_query = bytearray(upgraded.pack())
        server = self.upstream if self.mode is not DnsMode.HIJACK else None
        fwd = Forward(
            wire=frame(bytes(upstream_query)),
            upstream_id=upstream_id,
            query=bytes(payload),
            key=key,
            udp_limit=limit,
            server=server,
            sent_at=now,
            tcp=tcp,
        )
        self._pending[upstream_id] = fwd
        return fwd

    def _fresh_id(self) -> int:
        for _ in range(64):
            ident = self._next_id() & 0xFFFF
            if ident not in self._pending:
                return ident
        raise RuntimeError("no free DNS ID (id_source is not random?)")

    # -- upstream replies --------------------------------------------------------------

    def handle_reply(self, reply: bytes, now: float) -> tuple[Forward, bytes] | None:
        """Match an upstream reply to its query; (forward, answer for the client) or None
        for a reply nobody waits for or that does not answer the question asked."""
        if len(reply) < HEADER_LEN:
            return None
        fwd = self._pending.get(int.from_bytes(reply[:2], "big"))
        if fwd is None:
            return None
        try:
            record = DNSRecord.parse(reply)
        except (DNSError, ValueError, IndexError):
            return None
        if not record.header.qr or cache_key(record) != fwd.key:
            return None  # spoofed or confused: keep waiting for the real one
        del self._pending[fwd.upstream_id]
        self.cache.put(fwd.key, record, now)
        client = DNSRecord.parse(fwd.query)
        record.header.id = client.header.id
        record.questions = list(client.questions)
        if fwd.udp_limit == CLASSIC_UDP_LIMIT:
            record.ar = [rr for rr in record.ar if rr.rtype != QTYPE.OPT]
        return fwd, fit_udp(record, MAX_MESSAGE if fwd.tcp else fwd.udp_limit)

    def fail(self, upstream_id: int) -> tuple[Forward, bytes] | None:
        """The upstream stream broke: the SERVFAIL answer for a pending query."""
        fwd = self._pending.pop(upstream_id, None)
        if fwd is None:
            return None
        return fwd, _error_reply(fwd.query, RCODE.SERVFAIL)

    def expire(self, now: float) -> list[tuple[Forward, bytes]]:
        """Queries whose upstream did not answer within UPSTREAM_TIMEOUT, with SERVFAIL."""
        late = [i for i, f in self._pending.items() if now - f.sent_at >= UPSTREAM_TIMEOUT]
        return [r for i in late if (r := self.fail(i)) is not None]

    def next_timer(self) -> float | None:
        """When ``expire`` next has work (None: nothing pending)."""
        if not self._pending:
            return None
        return min(f.sent_at for f in self._pending.values()) + UPSTREAM_TIMEOUT

    @property
    def pending(self) -> int:
        """Forwarded queries awaiting a reply."""
        return len(self._pending)
