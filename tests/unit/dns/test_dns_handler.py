"""The DNS core: fake-IP answers, forwarding with IDs/cache/EDNS, timeouts, truncation."""

from __future__ import annotations

import itertools

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord

from ztun.dns import (
    UPSTREAM_TIMEOUT,
    Answer,
    DnsHandler,
    DnsMode,
    Drop,
    FakeIpPool,
    Forward,
    TcpDnsDeframer,
    reverse_pointer_address,
)


def ask(
    h: DnsHandler, name: str, qtype: str = "A", now: float = 0.0, ident: int = 0x4242
) -> Answer | Forward | Drop:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    return h.handle_query(bytes(q.pack()), now)


def answer_of(result: object) -> DNSRecord:
    assert isinstance(result, Answer), result
    return DNSRecord.parse(result.payload)


@pytest.fixture
def fake() -> DnsHandler:
    return DnsHandler(DnsMode.FAKE_IP, pool=FakeIpPool())


def test_fake_a_and_aaaa(fake: DnsHandler) -> None:
    r = answer_of(ask(fake, "WWW.Example.COM"))
    assert r.header.id == 0x4242 and r.header.qr and r.header.rcode == RCODE.NOERROR
    assert str(r.q.qname) == "WWW.Example.COM."  # the client's spelling comes back
    assert [(str(rr.rdata), rr.ttl) for rr in r.rr] == [("198.18.0.1", 1)]
    r6 = answer_of(ask(fake, "www.example.com", "AAAA"))
    assert [str(rr.rdata) for rr in r6.rr] == ["fc00::1"]
    assert fake.pool is not None and fake.pool.domain_for("198.18.0.1") == "www.example.com"


def test_https_svcb_and_other_types_get_empty_noerror(fake: DnsHandler) -> None:
    for qtype in ("HTTPS", "SVCB", "MX", "TXT"):
        r = answer_of(ask(fake, "example.com", qtype))
        assert r.header.rcode == RCODE.NOERROR and not r.rr


def test_other_types_can_be_forwarded() -> None:
    h = DnsHandler(DnsMode.FAKE_IP, pool=FakeIpPool(), forward_other=True)
    assert isinstance(ask(h, "example.com", "MX"), Forward)
    assert not answer_of(ask(h, "example.com", "HTTPS")).rr  # never: hints would bypass


def test_ptr_of_a_fake_address(fake: DnsHandler) -> None:
    ask(fake, "example.com")
    r = answer_of(ask(fake, "1.0.18.198.in-addr.arpa", "PTR"))
    assert [str(rr.rdata) for rr in r.rr] == ["example.com."]
    unknown = answer_of(ask(fake, "9.9.18.198.in-addr.arpa", "PTR"))
    assert unknown.header.rcode == RCODE.NXDOMAIN


def test_local_names_are_never_faked(fake: DnsHandler) -> None:
    for name in ("localhost", "printer.local"):
        assert not answer_of(ask(fake, name)).rr


def test_garbage_in() -> None:
    h = DnsHandler(DnsMode.FAKE_IP, pool=FakeIpPool())
    assert isinstance(h.handle_query(b"\x01\x02", 0), Drop)
    bad = h.handle_query(b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", 0)
    r = answer_of(bad)
    assert r.header.id == 0xBEEF and r.header.rcode == RCODE.FORMERR
    q = DNSRecord.question("example.com")
    q.header.opcode = 4  # NOTIFY
    assert answer_of(h.handle_query(bytes(q.pack()), 0)).header.rcode == RCODE.NOTIMP
    resp = DNSRecord.question("example.com").reply()
    assert isinstance(h.handle_query(bytes(resp.pack()), 0), Drop)


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("4.3.2.1.in-addr.arpa.", "1.2.3.4"),
        ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.f.ip6.arpa", "fc00::1"),
        ("3.2.1.in-addr.arpa", None),
        ("x.3.2.1.in-addr.arpa", None),
        ("example.com", None),
    ],
)
def test_reverse_pointer_names(name: str, addr: str | None) -> None:
    got = reverse_pointer_address(name)
    assert (str(got) if got else None) == addr


def upstream_reply(fwd: Forward, ttl: int = 300, answers: int = 1) -> bytes:
    """What a resolver sends back for ``fwd`` (parsed from the framed wire)."""
    (query,) = TcpDnsDeframer().feed(fwd.wire)
    q = DNSRecord.parse(query)
    r = q.reply()
    for i in range(answers):
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"192.0.2.{i % 250 + 1}"), ttl=ttl))
    return bytes(r.pack())


def remote() -> DnsHandler:
    ids = itertools.count(0x1000)
    return DnsHandler(DnsMode.REMOTE, upstream=("192.0.2.53", 53), id_source=lambda: next(ids))


def test_remote_forward_reply_and_cache() -> None:
    h = remote()
    fwd = ask(h, "Example.com", ident=7, now=10.0)
    assert isinstance(fwd, Forward)
    assert fwd.server == ("192.0.2.53", 53) and fwd.upstream_id == 0x1000
    (wire,) = TcpDnsDeframer().feed(fwd.wire)
    sent = DNSRecord.parse(wire)
    assert sent.header.id == 0x1000
    assert any(rr.rtype == QTYPE.OPT for rr in sent.ar)  # asks with EDNS0 over TCP
    got = h.handle_reply(upstream_reply(fwd), now=10.2)
    assert got is not None and got[0] is fwd
    client = DNSRecord.parse(got[1])
    assert client.header.id == 7 and str(client.q.qname) == "Example.com."
    assert not client.ar  # the client sent no OPT, it gets none back
    assert h.pending == 0
    # a second client is answered from the cache, with the remaining TTL
    hit = answer_of(ask(h, "EXAMPLE.com", ident=9, now=110.0))
    assert hit.header.id == 9 and str(hit.q.qname) == "EXAMPLE.com."
    assert [rr.ttl for rr in hit.rr] == [200]
    # expired: forwarded again
    assert isinstance(ask(h, "example.com", now=400.0), Forward)


def test_hijack_mode_asks_the_original_server() -> None:
    h = DnsHandler(DnsMode.HIJACK)
    fwd = ask(h, "example.com")
    assert isinstance(fwd, Forward) and fwd.server is None


def test_replies_that_do_not_match_are_ignored() -> None:
    h = remote()
    fwd = ask(h, "example.com")
    assert isinstance(fwd, Forward)
    other = DNSRecord.question("evil.example").reply()
    other.header.id = fwd.upstream_id
    assert h.handle_reply(bytes(other.pack()), 0) is None  # wrong question
    stray = DNSRecord.question("example.com").reply()
    stray.header.id = fwd.upstream_id ^ 1
    assert h.handle_reply(bytes(stray.pack()), 0) is None  # nobody asked
    assert h.handle_reply(b"junk", 0) is None
    assert h.pending == 1
    assert h.handle_reply(upstream_reply(fwd), 0) is not None


def test_timeouts_become_servfail() -> None:
    h = remote()
    fwd = ask(h, "example.com", ident=3, now=100.0)
    assert isinstance(fwd, Forward)
    assert h.next_timer() == 100.0 + UPSTREAM_TIMEOUT
    assert h.expire(100.0 + UPSTREAM_TIMEOUT - 0.01) == []
    ((late, payload),) = h.expire(100.0 + UPSTREAM_TIMEOUT)
    assert late is fwd
    r = DNSRecord.parse(payload)
    assert r.header.id == 3 and r.header.rcode == RCODE.SERVFAIL
    assert h.next_timer() is None
    assert h.handle_reply(upstream_reply(fwd), 200.0) is None  # too late: ignored


def test_broken_stream_fails_pending() -> None:
    h = remote()
    fwd = ask(h, "example.com")
    assert isinstance(fwd, Forward)
    failed = h.fail(fwd.upstream_id)
    assert failed is not None and DNSRecord.parse(failed[1]).header.rcode == RCODE.SERVFAIL
    assert h.fail(fwd.upstream_id) is None


def test_large_answers_truncate_for_classic_clients_only() -> None:
    h = remote()
    fwd = ask(h, "big.example")
    assert isinstance(fwd, Forward)
    got = h.handle_reply(upstream_reply(fwd, answers=60), 0)
    assert got is not None
    short = DNSRecord.parse(got[1])
    assert short.header.tc and not short.rr and str(short.q.qname) == "big.example."
    # an EDNS client with a 4096-byte buffer gets the whole (cached) answer
    q = DNSRecord.question("big.example")
    q.add_ar(EDNS0(udp_len=4096))
    whole = answer_of(h.handle_query(bytes(q.pack()), 1))
    assert len(whole.rr) == 60 and not whole.header.tc


def test_a_query_over_tcp_gets_its_large_answer_whole() -> None:
    """DNS over TCP (an app's, answered under fake-ip) has no 512-byte limit: neither the
    upstream's reply nor the cached answer is cut to TC=1, with or without EDNS0."""
    h = remote()
    query = DNSRecord.question("big.example")
    fwd = h.handle_query(bytes(query.pack()), 0, tcp=True)
    assert isinstance(fwd, Forward) and fwd.tcp
    got = h.handle_reply(upstream_reply(fwd, answers=60), 0)
    assert got is not None
    whole = DNSRecord.parse(got[1])
    assert len(whole.rr) == 60 and not whole.header.tc and not whole.ar  # no OPT asked
    cached = answer_of(h.handle_query(bytes(query.pack()), 1, tcp=True))
    assert len(cached.rr) == 60 and not cached.header.tc
    assert answer_of(h.handle_query(bytes(query.pack()), 1)).header.tc  # over UDP: cut


def test_mode_requirements() -> None:
    with pytest.raises(ValueError):
        DnsHandler(DnsMode.OFF)
    with pytest.raises(ValueError):
        DnsHandler(DnsMode.FAKE_IP)
    with pytest.raises(ValueError):
        DnsHandler(DnsMode.REMOTE)


def test_txt_passthrough_keeps_rdata() -> None:
    h = remote()
    fwd = ask(h, "t.example", "TXT")
    assert isinstance(fwd, Forward)
    (wire,) = TcpDnsDeframer().feed(fwd.wire)
    r = DNSRecord.parse(wire).reply()
    r.add_answer(RR("t.example", QTYPE.TXT, rdata=TXT("hello"), ttl=60))
    got = h.handle_reply(bytes(r.pack()), 0)
    assert got is not None and str(DNSRecord.parse(got[1]).rr[0].rdata) == '"hello"'
