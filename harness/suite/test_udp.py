"""UDP behaviours: echo over IPv4 and IPv6, DNS, and the UDP ASSOCIATE a proxy receives.

UDP rows use the recording proxy (see conformance_path.py: it relays from the control
connection's address whatever the request declared), except ``udp_echo_danted``, the
interoperability row with the strict real server.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from harness.assertions import assert_socks5_roundtrip
from harness.peers.starters import RecordingSocks5, start_dnsmasq
from harness.suite.path import UDP_ECHO_PORT, StartPath, udp_echo

pytestmark = [pytest.mark.conformance]

DATAGRAMS = 5
MAX_DATAGRAM = 1200
DNS_PORT = 53
DNS_NAME = "probe.conformance.test"
DNS_ANSWER_V4 = "10.9.8.7"
DNS_ANSWER_V6 = "fd00:9:8::7"


def _echo_some(
    start_path: StartPath, rng: random.Random, *, v6: bool, proxy: str = "recording"
) -> None:
    path = start_path(proxy, targets=["udp"])
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
    start_dnsmasq(path.server, path.server_v4, {DNS_NAME: [DNS_ANSWER_V4, DNS_ANSWER_V6]})
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
def test_udp_echo_danted(start_path: StartPath, rng: random.Random) -> None:
    """UDP echo works through danted, a strict real server that enforces the declared client
    address: interoperability with a common SOCKS5 server's UDP relay."""
    _echo_some(start_path, rng, v6=False, proxy="danted")
