"""Crafted bad packets written into the TUN: dropped without harm, and never relayed.

Packets are sent with an AF_PACKET socket on the TUN device in the client
(:func:`harness.packets.send_raw` with ``iface=``): the implementation reads them exactly as
built, with nothing in the kernel fixing a length or a checksum on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
from collections.abc import Iterable

import pytest
from scapy.packet import Packet

from harness.assertions import assert_socks5_roundtrip
from harness.capture import capture
from harness.decode import PROTO_TCP, DecodeError, decode_ip, packets_of
from harness.packets import (
    fragments,
    garbage,
    icmp_echo,
    send_raw,
    tcp_syn,
    truncated,
    udp,
    with_bad_ip_checksum,
    with_bad_l4_checksum,
)
from harness.peers.starters import RecordingSocks5
from harness.suite.path import (
    CLOSED_PORT,
    DATA_PORT,
    DEVICE,
    ECHO_PORT,
    PROMPT,
    UDP_ECHO_PORT,
    Path,
    StartPath,
    echo,
    recv_all,
    udp_echo,
)
from harness.timescale import scaled

pytestmark = [pytest.mark.conformance]

GARBAGE_SIZES = (1, 4, 19, 20, 39, 40, 60, 576, 1400)
FRAGMENTED_PAYLOAD = 3000
FRAGMENT_SIZE = 1000
ROUNDS = 3
"""Each bad packet is sent this many times: a crash on a rare path shows up reliably."""
IP_HEADER = {4: 20, 6: 40}
IPV6_HOPOPTS, IPV6_DSTOPTS = 54, 59
"""<linux/in6.h> socket options that add a hop-by-hop / destination-options header."""
IPV6_HEADER = 40
PADDING_HEADER = bytes([0, 0, 1, 4, 0, 0, 0, 0])
"""One 8-byte extension header: next header and length (the kernel fills them), then a
PadN option (type 1) of 4 zero bytes (RFC 8200 section 4.2)."""
BAD_PORT = 5013
"""Target of bad-checksum datagrams: a relayed one shows up at the proxy by its port
(bad SYNs go to DATA_PORT, which no good flow of those tests uses)."""


def _inject(path: Path, packets: Iterable[Packet | bytes]) -> int:
    sent = 0
    for _ in range(ROUNDS):
        for packet in packets:
            # The kernel refuses a few shapes itself (e.g. shorter than a header it
            # checks); that is not the implementation's doing and is not counted.
            with contextlib.suppress(OSError):
                send_raw(path.client, packet, iface=DEVICE)
                sent += 1
    return sent


def _bad_packets(path: Path, rng: random.Random) -> list[Packet | bytes]:
    out: list[Packet | bytes] = []
    for version in (4, 6):
        src, dst = path.tun_address(version), path.server_ip(version == 6)
        syn = tcp_syn(rng, src, dst, CLOSED_PORT)
        datagram = udp(rng, src, dst, CLOSED_PORT, rng.randbytes(100))
        ping = icmp_echo(rng, src, dst, payload=rng.randbytes(56))
        out += [garbage(rng, size, version=version) for size in GARBAGE_SIZES]
        out += [truncated(rng, p) for p in (syn, datagram, ping)]
        out.append(truncated(rng, datagram, keep=IP_HEADER[version]))  # header, no UDP
        out += [with_bad_l4_checksum(rng, p) for p in (syn, datagram, ping)]
        big = udp(rng, src, dst, CLOSED_PORT, rng.randbytes(FRAGMENTED_PAYLOAD))
        pieces = fragments(rng, big, FRAGMENT_SIZE)
        out += pieces[:1]  # an incomplete datagram: reassembly must time out, not leak
        out += list(reversed(pieces))  # complete but out of order
        out += [
            tcp_syn(rng, src, dst, CLOSED_PORT, ttl=1),
            udp(rng, src, dst, CLOSED_PORT, b"ttl one", ttl=1),
            icmp_echo(rng, src, dst, ttl=1),
        ]
        if version == 4:
            out.append(with_bad_ip_checksum(rng, datagram))
            out.append(bytes([0x44]) + rng.randbytes(39))  # IHL 4: shorter than a header
            out.append(bytes([0x45, 0, 0, 10]) + rng.randbytes(36))  # total length < header
    out += [garbage(rng, size) for size in GARBAGE_SIZES]
    return out


@pytest.mark.timeout(90)
def test_bad_packets_harmless(start_path: StartPath, rng: random.Random) -> None:
    """After garbage, truncated packets, bad checksums, fragments and TTL 1 written into the
    TUN, the implementation is alive and new TCP (v4, v6) and UDP flows work: one bad
    packet from any app must not take every app's connectivity down."""
    path = start_path("recording", targets=["udp"])
    sent = _inject(path, _bad_packets(path, rng))
    assert sent, "the kernel refused every crafted packet: nothing was tested"
    assert path.impl.alive(), f"{path.impl.impl} died after {sent} crafted packets"
    payload = rng.randbytes(5000)
    assert echo(path, payload) == payload, "TCP after the bad packets"
    assert echo(path, payload, v6=True) == payload, "TCP over IPv6 after the bad packets"
    datagram = rng.randbytes(500)
    assert udp_echo(path, datagram)[0] == datagram, "UDP after the bad packets"
    assert path.impl.alive()


def _bad_checksum_packets(path: Path, rng: random.Random, kind: str) -> list[Packet]:
    bad: list[Packet] = []
    for version in (4, 6):
        src, dst = path.tun_address(version), path.server_ip(version == 6)
        if kind == "tcp":
            bad.append(with_bad_l4_checksum(rng, tcp_syn(rng, src, dst, DATA_PORT)))
        elif kind == "udp":
            bad.append(with_bad_l4_checksum(rng, udp(rng, src, dst, BAD_PORT, b"bad udp sum")))
        elif version == 4:  # IPv6 has no header checksum
            bad.append(with_bad_ip_checksum(rng, tcp_syn(rng, src, dst, DATA_PORT)))
            bad.append(with_bad_ip_checksum(rng, udp(rng, src, dst, BAD_PORT, b"bad ip sum")))
    return bad


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["tcp", "udp", "ipv4-header"])
def test_bad_checksum_not_relayed(start_path: StartPath, rng: random.Random, kind: str) -> None:
    """A SYN or datagram with a wrong TCP / UDP / IPv4 header checksum opens nothing at
    the proxy (RFC 1122 4.2.2.7, 4.1.3.4, 3.2.1.2: silently discard): otherwise a corrupted
    packet becomes a real connection or datagram at the far end.

    A tun2socks is the receiving host of what the app sends: RFC 1122 4.2.2.7 (TCP),
    4.1.3.4 (UDP) and 3.2.1.2 (IP header) require such packets to be silently discarded,
    or a corrupted packet becomes a real connection or datagram at the far end. The good
    flows sent afterwards are the barrier: once the proxy has logged them, the bad
    packets, read from the TUN before them, have been dealt with.
    """
    path = start_path("recording", targets=["udp"])
    assert isinstance(path.proxy, RecordingSocks5)
    assert _inject(path, _bad_checksum_packets(path, rng, kind)), (
        "the kernel refused every crafted packet: nothing was tested"
    )

    for v6 in (False, True):  # the barrier: good flows after the bad packets
        payload, datagram = rng.randbytes(1000), rng.randbytes(100)
        assert echo(path, payload, v6=v6) == payload
        assert udp_echo(path, datagram, v6=v6)[0] == datagram
        digest, ddigest = hashlib.sha256(payload).hexdigest(), hashlib.sha256(datagram).hexdigest()
        server = path.server_ip(v6)
        assert_socks5_roundtrip(path.proxy, (server, ECHO_PORT), digest, digest, command="CONNECT")
        assert_socks5_roundtrip(
            path.proxy, (server, UDP_ECHO_PORT), ddigest, ddigest, command="UDP ASSOCIATE"
        )

    relayed = []
    for request in path.proxy.requests():
        if request.command == "CONNECT" and request.target_port == DATA_PORT:
            relayed.append(f"CONNECT {request.target} for a SYN with a bad {kind} checksum")
        for stats in request.udp.values():
            if int(stats.target.rpartition(":")[2]) == BAD_PORT:
                relayed.append(
                    f"{stats.datagrams_to_target} datagram(s) with a bad {kind} "
                    f"checksum to {stats.target}"
                )
    assert not relayed, "the proxy relayed packets that had to be discarded:\n  " + "\n  ".join(
        relayed
    )


@pytest.mark.pcap
@pytest.mark.timeout(60)
def test_ipv6_syn_with_extension_headers(start_path: StartPath, rng: random.Random) -> None:
    """An IPv6 connection whose every packet, the SYN first, carries hop-by-hop and
    destination-options headers before TCP (RFC 8200 section 4) works end to end: such
    packets are legal, and an implementation that reads TCP right after the fixed header
    drops them or reads the ports from the options.

    The app's socket gets the headers from the kernel (IPV6_HOPOPTS, IPV6_DSTOPTS sticky
    options, each one 8-byte header of padding); the capture on the TUN proves the SYN
    carried them.
    """
    path = start_path("recording")
    assert isinstance(path.proxy, RecordingSocks5)
    sock = path.client.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with sock, capture(path.client, DEVICE, "ip6") as cap:
        for option in (IPV6_HOPOPTS, IPV6_DSTOPTS):
            sock.setsockopt(socket.IPPROTO_IPV6, option, PADDING_HEADER)
        sock.settimeout(scaled(PROMPT))
        sock.connect((path.server_ip(v6=True), ECHO_PORT))
        payload = rng.randbytes(3000)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == payload
    syns = []
    for _, data in packets_of(cap.path):
        with contextlib.suppress(DecodeError):
            packet = decode_ip(data)
            if packet.protocol == PROTO_TCP and packet.tcp_flags == "S":
                syns.append(packet)
    assert any(p.header_len > IPV6_HEADER for p in syns), (
        f"the app's SYN carried no extension header (so nothing was tested): {cap.path}"
    )
    digest = hashlib.sha256(payload).hexdigest()
    assert_socks5_roundtrip(
        path.proxy, (path.server_ip(v6=True), ECHO_PORT), digest, digest, command="CONNECT"
    )
