"""TCP framing across read boundaries and the TTL cache."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord

from ztun.dns import DnsCache, TcpDnsDeframer, cache_key, frame


def test_frame_and_deframe_byte_by_byte() -> None:
    msgs = [b"\x12\x34" + bytes(10), b"\xab" * 300]
    stream = b"".join(frame(m) for m in msgs)
    d = TcpDnsDeframer()
    out: list[bytes] = []
    for i in range(len(stream)):
        got = d.feed(stream[i : i + 1])
        if i < len(frame(msgs[0])) - 1:
            assert got == []  # nothing until the first message is whole
        out += got
    assert out == msgs and d.pending == 0


def test_deframe_several_in_one_read_and_a_partial() -> None:
    d = TcpDnsDeframer()
    assert d.feed(frame(b"a" * 12) + frame(b"b" * 12) + b"\x00\x0c\x01") == [b"a" * 12, b"b" * 12]
    assert d.pending == 3


def test_framing_errors() -> None:
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(bytes(0x10000))
    with pytest.raises(ValueError, match="zero-length"):
        TcpDnsDeframer().feed(b"\x00\x00")


def reply(name: str = "example.com", ttls: tuple[int, ...] = (300, 60)) -> DNSRecord:
    r = DNSRecord.question(name).reply()
    for i, ttl in enumerate(ttls):
        r.add_answer(RR(name, QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=ttl))
    return r


def negative(rcode: int, soa_ttl: int = 3600, minimum: int = 120) -> DNSRecord:
    r = DNSRecord.question("nx.example.com").reply()
    r.header.rcode = rcode
    r.add_auth(
        RR(
            "example.com",
            QTYPE.SOA,
            ttl=soa_ttl,
            rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, minimum)),
        )
    )
    return r


def test_entry_lives_for_the_smallest_ttl_and_ages() -> None:
    cache = DnsCache()
    r = reply()
    key = cache_key(r)
    assert key == ("example.com", 1, 1)
    assert cache.put(key, r, now=100.0) == 60
    got = cache.get(key, now=130.5)
    # 30.5 s old: the age rounds up, so the copy never promises more life than is left
    assert got is not None and [rr.ttl for rr in got.rr] == [29, 29]
    assert cache.get(key, now=160.0) is None
    assert len(cache) == 0


def test_ttl_clamps() -> None:
    cache = DnsCache(min_ttl=10, max_ttl=100)
    assert cache.put(("a", 1, 1), reply(ttls=(2,)), 0) == 10
    assert cache.put(("b", 1, 1), reply(ttls=(5000,)), 0) == 100
    got = cache.get(("b", 1, 1), 1)
    assert got is not None and got.rr[0].ttl == 99


def test_negative_answers_use_the_soa_minimum() -> None:
    cache = DnsCache(max_negative_ttl=300)
    assert cache.put(("nx", 1, 1), negative(RCODE.NXDOMAIN), 0) == 120
    assert cache.put(("nd", 1, 1), negative(RCODE.NOERROR, minimum=9999), 0) == 300
    bare = DNSRecord.question("x").reply()
    bare.header.rcode = RCODE.NXDOMAIN
    assert cache.put(("bare", 1, 1), bare, 0) == 0  # RFC 2308: no SOA, no caching


def test_servfail_and_zero_ttl_are_not_cached() -> None:
    cache = DnsCache()
    r = reply()
    r.header.rcode = RCODE.SERVFAIL
    assert cache.put(("s", 1, 1), r, 0) == 0
    assert cache.put(("z", 1, 1), reply(ttls=(0,)), 0) == 0
    assert len(cache) == 0


def test_lru_bound_and_opt_ttl_untouched() -> None:
    cache = DnsCache(max_entries=2)
    r = reply(ttls=(100,))
    r.add_ar(EDNS0(flags="do"))
    opt_ttl = r.ar[0].ttl
    for name in ("a", "b", "c"):
        cache.put((name, 1, 1), r, 0)
    assert cache.get(("a", 1, 1), 1) is None and len(cache) == 2
    got = cache.get(("c", 1, 1), 50)
    assert got is not None and got.ar[0].ttl == opt_ttl and got.rr[0].ttl == 50


def test_cache_key_needs_exactly_one_question() -> None:
    r = DNSRecord()
    assert cache_key(r) is None
