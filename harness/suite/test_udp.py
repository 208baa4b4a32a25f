"""UDP behaviours: echo over IPv4 and IPv6, DNS over UDP and TCP, fragmented datagrams,
bursts of new flows, endpoint-independent mapping, and the UDP ASSOCIATE a proxy receives.

UDP rows use the recording proxy (see harness/suite/path.py: it relays from the control
connection's address whatever the request declared), except ``udp_echo_danted``, the
interoperability row with the strict real server.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import random
import selectors
import socket
import threading
import time

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from harness.assertions import assert_socks5_roundtrip
from harness.peers.starters import RecordingSocks5, start_dnsmasq
from harness.suite.path import UDP_ECHO_PORT, Path, StartPath, Testbed, recv_all, udp_echo
from harness.timescale import scaled

pytestmark = [pytest.mark.conformance]

DATAGRAMS = 5
MAX_DATAGRAM = 1200
DNS_PORT = 53
DNS_NAME = "probe.conformance.test"
DNS_ANSWER_V4 = "10.9.8.7"
DNS_ANSWER_V6 = "fd00:9:8::7"
FRAGMENTED = 4000
"""Bytes of a datagram the client's kernel must fragment before the TUN (MTU 1500)."""
BURST = 1000
BURST_SHARE = 0.95
BURST_SEND_WITHIN = 1.0
BURST_COLLECT = 10.0
EIM_PORT, EIM_REPLY_PORT = 5006, 5007
"""The endpoint-independent-mapping server listens on one port and answers from another."""


def _echo_some(start_path: StartPath, rng: random.Random, *, v6: bool) -> None:
    _echo_path(start_path("recording", targets=["udp"]), rng, v6=v6)


def _echo_path(path: Path, rng: random.Random, *, v6: bool) -> None:
    server = path.server_ip(v6)
    for index in range(DATAGRAMS):
        payload = rng.randbytes(rng.randrange(1, MAX_DATAGRAM))
        data, source = udp_echo(path, payload, v6=v6)
        assert data == payload, f"datagram {index}: {len(data)} B back for {len(payload)} B sent"
        assert ipaddress.ip_address(source[0]) == ipaddress.ip_address(server), (
            f"reply from {source}, expected the server {server}"
        )
        assert source[1] == UDP_ECHO_PORT


@pytest.mark.timeout(60)
def test_udp_echo_v4(start_path: StartPath, rng: random.Random) -> None:
    """Datagrams to an IPv4 UDP echo come back intact, from the server's address and port:
    UDP apps (DNS, games, QUIC, VoIP) match replies by source, so a wrong one is a drop."""
    _echo_some(start_path, rng, v6=False)


@pytest.mark.timeout(60)
def test_ipv6_udp(start_path: StartPath, rng: random.Random) -> None:
    """Datagrams to an IPv6 UDP echo come back intact, from the server's address and port:
    the IPv4 row's promise for IPv6 apps, which otherwise lose UDP entirely."""
    _echo_some(start_path, rng, v6=True)


@pytest.mark.timeout(60)
def test_dns_over_udp(start_path: StartPath) -> None:
    """A DNS query (A and AAAA) over UDP gets the server's answer through the proxy's UDP
    relay: without it no name resolves and nearly every app fails."""
    path = start_path("recording")
    start_dnsmasq(path.server, path.listen_ip(), {DNS_NAME: [DNS_ANSWER_V4, DNS_ANSWER_V6]})
    sent, received = hashlib.sha256(), hashlib.sha256()
    with path.udp() as sock:  # one socket: one flow, so one association at the proxy
        for qtype, expected in (("A", DNS_ANSWER_V4), ("AAAA", DNS_ANSWER_V6)):
            query = DNSRecord.question(DNS_NAME, qtype)
            wire = query.pack()
            sock.sendto(wire, (path.server_v4, DNS_PORT))
            answer_wire, source = sock.recvfrom(4096)
            sent.update(wire)
            received.update(answer_wire)
            answer = DNSRecord.parse(answer_wire)
            assert source[:2] == (path.server_v4, DNS_PORT)
            assert answer.header.id == query.header.id
            assert answer.header.rcode == RCODE.NOERROR, RCODE.get(answer.header.rcode)
            records = [(QTYPE.get(rr.rtype), str(rr.rdata)) for rr in answer.rr]
            assert records == [(qtype, expected)], f"{qtype} {DNS_NAME}: {records}"
    assert isinstance(path.proxy, RecordingSocks5)
    assert_socks5_roundtrip(
        path.proxy,
        (path.server_v4, DNS_PORT),
        sent.hexdigest(),
        received.hexdigest(),
        command="UDP ASSOCIATE",
    )


@pytest.mark.timeout(60)
def test_udp_associate_client_address(start_path: StartPath, rng: random.Random) -> None:
    """The UDP ASSOCIATE request declares all zeros or the address the datagrams come from
    (RFC 1928 section 4): a server that enforces the declared address (danted does) drops
    every datagram of a client that declares another one.

    RFC 1928 section 4: DST.ADDR/DST.PORT of UDP ASSOCIATE are "the address and port that
    the client expects to use to send UDP datagrams"; a client that does not know them
    "MUST use a port number and address of all zeros". A server may (danted does) accept
    datagrams only from the declared address.
    """
    path = start_path("recording", targets=["udp"])
    udp_echo(path, rng.randbytes(100))
    assert isinstance(path.proxy, RecordingSocks5)
    request = path.proxy.wait_for_request(lambda r: r.command == "UDP ASSOCIATE")
    declared = ipaddress.ip_address(request.target_host)
    source = ipaddress.ip_address(request.client.rpartition(":")[0].strip("[]"))
    assert declared.is_unspecified or declared == source, (
        f"UDP ASSOCIATE declared client address {request.target}, but the datagrams come "
        f"from {source} (RFC 1928: all zeros if unknown)"
    )


@pytest.mark.timeout(60)
def test_udp_echo_danted(start_path: StartPath, testbed: Testbed, rng: random.Random) -> None:
    """UDP echo works through danted, a strict real server that enforces the declared client
    address: interoperability with a common SOCKS5 server's UDP relay."""
    testbed.require_netns("danted cannot reach targets that exist nowhere (no address map)")
    path = start_path("danted", targets=["udp"])
    _echo_path(path, rng, v6=False)


@pytest.mark.timeout(60)
def test_dns_over_tcp(start_path: StartPath) -> None:
    """A DNS query over TCP (RFC 7766: two-byte length, then the message) gets the server's
    answer: resolvers switch to TCP for large or truncated answers, and without it those
    names fail to resolve."""
    path = start_path("recording")
    start_dnsmasq(path.server, path.listen_ip(), {DNS_NAME: [DNS_ANSWER_V4]})
    query = DNSRecord.question(DNS_NAME, "A")
    wire = query.pack()
    with path.connect(DNS_PORT) as sock:
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        sock.shutdown(socket.SHUT_WR)
        reply = recv_all(sock)
    assert len(reply) >= 2, f"no answer over TCP (got {reply!r})"
    length = int.from_bytes(reply[:2], "big")
    answer = DNSRecord.parse(reply[2 : 2 + length])
    assert answer.header.id == query.header.id
    records = [(QTYPE.get(rr.rtype), str(rr.rdata)) for rr in answer.rr]
    assert records == [("A", DNS_ANSWER_V4)], records


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_udp_fragmented_4000(start_path: StartPath, rng: random.Random, family: str) -> None:
    """A 4000-byte datagram, which the client's kernel fragments before the TUN (MTU 1500),
    is reassembled, relayed whole and its 4000-byte echo reaches the app: DNS with EDNS,
    QUIC handshakes and VPN-over-UDP send datagrams above the MTU, and dropping fragments
    makes them fail with no error."""
    path = start_path("recording", targets=["udp"])
    payload = rng.randbytes(FRAGMENTED)
    data, _ = udp_echo(path, payload, v6=family == "v6")
    assert data == payload, f"{len(data)} B came back for {len(payload)} B sent"


def _allow_sockets(count: int) -> None:
    """Raise this process's open-file limit to ``count`` if it is lower (POSIX)."""
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit of this kind
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count), hard))


@pytest.mark.timeout(90)
def test_udp_burst_1000_flows(start_path: StartPath, rng: random.Random) -> None:
    """1000 new UDP flows opened within one second (one datagram each, 1000 source ports)
    get at least 95% of their echoes: DNS-heavy apps and games open flows in bursts, and an
    implementation that drops new flows under load loses their first packets."""
    path = start_path("recording", targets=["udp"])
    _allow_sockets(BURST + 200)
    payloads = [rng.randbytes(64) + index.to_bytes(4, "big") for index in range(BURST)]
    socks = []
    try:
        for _ in payloads:
            sock = path.udp()
            sock.setblocking(False)
            socks.append(sock)
        target = (path.server_v4, UDP_ECHO_PORT)
        started = time.monotonic()
        for index, (sock, payload) in enumerate(zip(socks, payloads, strict=True)):
            # Evenly over one second: a rate of new flows, not a single instant (a TUN's
            # 500-packet queue would then measure the kernel, not the implementation).
            due = started + index * BURST_SEND_WITHIN / BURST
            if (ahead := due - time.monotonic()) > 0:
                time.sleep(ahead)  # noqa: sleep-ok - pacing the burst is the behaviour
            sock.sendto(payload, target)
        took = time.monotonic() - started
        answered: set[int] = set()
        deadline = time.monotonic() + scaled(BURST_COLLECT)
        with selectors.DefaultSelector() as selector:
            for index, sock in enumerate(socks):
                selector.register(sock, selectors.EVENT_READ, index)
            while len(answered) < BURST and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    index = key.data
                    data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                    if data == payloads[index]:
                        answered.add(index)
                    selector.unregister(key.fileobj)
    finally:
        for sock in socks:
            sock.close()
    assert took < scaled(2 * BURST_SEND_WITHIN), f"sending the burst took {took:.2f}s"
    share = len(answered) / BURST
    assert share >= BURST_SHARE, (
        f"{len(answered)} of {BURST} new flows got their echo ({share:.1%} < {BURST_SHARE:.0%})"
    )


@pytest.mark.timeout(60)
def test_udp_endpoint_independent_mapping(start_path: StartPath, rng: random.Random) -> None:
    """A reply from another port of the server (the app sent to port 5006, the answer comes
    from 5007) reaches the app's socket: RFC 4787 endpoint-independent mapping and
    filtering, which STUN, WebRTC and game traffic rely on to get through a NAT."""
    path = start_path("recording")
    family = socket.AF_INET
    listen_ip = path.listen_ip()
    inbound = path.server.socket(family, socket.SOCK_DGRAM)
    outbound = path.server.socket(family, socket.SOCK_DGRAM)
    payload = rng.randbytes(300)
    with inbound, outbound:
        inbound.bind((listen_ip, EIM_PORT))
        outbound.bind((listen_ip, EIM_REPLY_PORT))
        inbound.settimeout(scaled(10.0))

        def answer_from_other_port() -> None:
            with contextlib.suppress(OSError):
                data, peer = inbound.recvfrom(2048)
                outbound.sendto(data[::-1], peer)

        responder = threading.Thread(target=answer_from_other_port, daemon=True)
        responder.start()
        with path.udp() as sock:
            sock.sendto(payload, (path.server_v4, EIM_PORT))
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                raise AssertionError(
                    f"no reply from {path.server_v4}:{EIM_REPLY_PORT} reached the app (the "
                    f"request to port {EIM_PORT} went out; see the proxy's log)"
                ) from None
        responder.join(scaled(10.0))
    assert data == payload[::-1]
    assert (ipaddress.ip_address(source[0]), source[1]) == (
        ipaddress.ip_address(path.server_v4),
        EIM_REPLY_PORT,
    ), f"reply came from {source}"
