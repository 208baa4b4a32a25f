"""A hostile app in the client writes malformed packets into the TUN while a download
runs: each is counted under its reason and dropped, the download arrives byte for byte,
and ztun keeps answering.

Real TUN, real danted; the frames go in through a packet socket on the TUN in the client
namespace (`harness.packets.send_raw(iface=...)`: no routing, no kernel fix-ups), many
of them with the live flow's own addresses and ports, so they meet the NAT entry (and,
by default, the kernel NAT's tc program) that carries the download.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import struct
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Raw
from ztun_path import DATA_PORT, DEVICE, ECHO_PORT, UDP_ECHO_PORT, Path, StartPath

from harness.impls.base import DEFAULT_ADDRESSES
from harness.impls.ztun import default_binary
from harness.packets import send_raw
from harness.peers.targets import seeded_sha256

pytestmark = [pytest.mark.netns, pytest.mark.linux]

DOWNLOAD = 48 << 20
ROUNDS = 12  # each round: every malformed frame once, then 1 MiB more of the download


def _ipv4(frame: bytes, **fields: int) -> bytes:
    """`frame` (IPv4) with header fields overwritten and the header checksum made right
    again, so the field under test is what is wrong: IHL (`ihl`, words), total length
    (`total`), flags/fragment offset word (`frag`)."""
    out = bytearray(frame)
    if "ihl" in fields:
        out[0] = 0x40 | fields["ihl"]
    if "total" in fields:
        struct.pack_into("!H", out, 2, fields["total"])
    if "frag" in fields:
        struct.pack_into("!H", out, 6, fields["frag"])
    struct.pack_into("!H", out, 10, 0)
    words = struct.unpack("!10H", bytes(out[:20]))
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", out, 10, ~total & 0xFFFF)
    return bytes(out)


def malformed_frames(
    flow: tuple[str, int, str, int], v6_src: str, v6_dst: str, ident: int
) -> list[tuple[str, bytes]]:
    """(the stack counter it must move, frame): `flow` is the download's (client address,
    port, server address, port) as the app's kernel sends it into the TUN. `ident` and
    the next few are the fragments' identifications: a datagram of its own each, as an
    overlap discards later fragments of the same datagram whatever is wrong with them."""
    src, sport, dst, dport = flow
    seg = bytes(IP(src=src, dst=dst, id=ident) / TCP(sport=sport, dport=dport, flags="A"))
    udp = bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=UDP_ECHO_PORT) / Raw(b"x" * 12))
    stray = bytearray(bytes(IP(src=src, dst=dst) / TCP(sport=sport ^ 1, dport=dport, flags="A")))
    stray[10] ^= 0xFF  # the header checksum wrong, all else right

    def fragment(number: int, data: bytes, word: int) -> bytes:
        """A fragment of the flow's TCP with identification `ident + number`."""
        header = bytearray(seg[:20])
        struct.pack_into("!H", header, 4, (ident + number) & 0xFFFF)
        return _ipv4(bytes(header) + data, total=20 + len(data), frag=word)

    frames = [
        # TCP of the live flow: data offset 15 (60 bytes) in a 20-byte segment, and 4.
        ("malformed_truncated", seg[:32] + bytes([0xF0]) + seg[33:]),
        ("malformed_bad_data_offset", seg[:32] + bytes([0x40]) + seg[33:]),
        # A TCP header cut short (12 of its 20 bytes), total length to match.
        ("malformed_truncated", _ipv4(seg[:32], total=32)),
        # IHL: below 5; 15 (60 bytes) in a 40-byte packet.
        ("malformed_bad_ihl", _ipv4(seg, ihl=3)),
        ("malformed_truncated", _ipv4(seg, ihl=15)),
        # Total length: past the buffer; shorter than the header.
        ("malformed_truncated", _ipv4(seg, total=1400)),
        ("malformed_bad_length", _ipv4(seg, total=12)),
        # The header checksum wrong: from a port with no flow, as the tc program would
        # rewrite one of the live flow's and the kernel drop it, never reaching ztun.
        ("ipv4_bad_checksum", bytes(stray)),
        # UDP length lies: past the datagram; below the header.
        ("malformed_truncated", udp[:24] + struct.pack("!H", 200) + udp[26:]),
        ("malformed_bad_length", udp[:24] + struct.pack("!H", 3) + udp[26:]),
        # ICMP with 4 bytes of its 8-byte header.
        ("malformed_truncated", bytes(IP(src=src, dst=dst, proto=1) / Raw(b"\x08\x00\x00\x00"))),
        # Fragments of the live flow's TCP: a first one of 4 bytes (RFC 1858 asks for 8),
        # an empty non-first one, one ending past 65535 bytes (the ping of death), and
        # two that overlap (offsets 0 and 8, 16 bytes each).
        ("fragment_tiny", fragment(0, seg[20:24], 0x2000)),
        ("fragment_bad_length", fragment(1, b"", 0x2001)),
        ("fragment_too_big", fragment(2, bytes(64), 0x1FFF)),
        ("fragment_overlap", fragment(3, seg[20:36], 0x2000)),
        ("fragment_overlap", fragment(3, bytes(16), 0x2001)),
    ]
    # IPv6: fixed header cut short; payload length past the buffer.
    six = bytes(IPv6(src=v6_src, dst=v6_dst) / TCP(sport=sport, dport=dport, flags="A"))
    frames += [
        ("malformed_truncated", six[:30]),
        ("malformed_truncated", six[:4] + struct.pack("!H", 900) + six[6:]),
    ]
    # Extension chains: nine destination-options headers (more than ztun walks); a
    # hop-by-hop header that is not first; one whose length runs past the packet.
    chain = IPv6(src=v6_src, dst=v6_dst)
    for _ in range(9):
        chain = chain / IPv6ExtHdrDestOpt()
    frames.append(("malformed_bad_ext_header", bytes(chain / TCP(sport=sport, dport=dport))))
    late_hbh = IPv6(src=v6_src, dst=v6_dst) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / TCP()
    frames.append(("malformed_bad_ext_header", bytes(late_hbh)))
    long_ext = bytearray(bytes(IPv6(src=v6_src, dst=v6_dst) / IPv6ExtHdrDestOpt() / Raw(bytes(8))))
    long_ext[41] = 200  # (200 + 1) * 8 bytes claimed, 8 there
    frames.append(("malformed_bad_ext_header", bytes(long_ext)))
    # ICMPv6 with 4 bytes of its header; a first fragment too short for its TCP header
    # (RFC 7112).
    icmp6 = IPv6(src=v6_src, dst=v6_dst, nh=58) / Raw(
        b"\x80\x00\x00\x00"
    )  # echo request: type, code, sum
    frames.append(("malformed_truncated", bytes(icmp6)))
    tiny6 = IPv6(src=v6_src, dst=v6_dst) / IPv6ExtHdrFragment(nh=6, m=1, id=ident) / Raw(bytes(8))
    frames.append(("fragment_tiny", bytes(tiny6)))
    return frames


def stack_counters(path: Path) -> Counter[str]:
    """The stack's drop counters, asked of the running ztun over its control socket."""
    result = path.topo.client.run([default_binary(), "status", "--json"], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return Counter(json.loads(result.stdout)["counters"]["stack"])


@pytest.mark.parametrize("kernel_nat", [True, False], ids=["kernel-nat", "stack-nat"])
def test_malformed_frames_during_a_download_are_counted_and_harmless(  # type: ignore[no-untyped-def]
    start_path: StartPath, kernel_nat: bool
) -> None:
    path = start_path("danted", extra=() if kernel_nat else ("--no-kernel-nat",))
    v6_src = str(ipaddress.ip_interface(DEFAULT_ADDRESSES[1]).ip)
    before = stack_counters(path)
    seed = random.Random(DOWNLOAD).getrandbits(32)
    with path.connect(DATA_PORT, timeout=30) as sock:
        sock.sendall(f"SOURCE {DOWNLOAD} {seed}\n".encode())
        digest, count = hashlib.sha256(), 0

        def read(at_least: int) -> None:
            nonlocal count
            while count < at_least:
                data = sock.recv(1 << 20)
                assert data, f"download ended at {count} bytes"
                digest.update(data)
                count += len(data)

        read(1 << 20)  # the flow is established, its NAT entry (and the tc map's) in place
        client, client_port = sock.getsockname()[:2]
        flow = (client, client_port, path.server_v4, DATA_PORT)
        for round_ in range(ROUNDS):
            frames = malformed_frames(flow, v6_src, path.server_v6, 100 + 8 * round_)
            for _, frame in frames:
                send_raw(path.topo.client, frame, iface=DEVICE)
            read((round_ + 2) << 20)
        while data := sock.recv(1 << 20):
            digest.update(data)
            count += len(data)
    assert (count, digest.hexdigest()) == (DOWNLOAD, seeded_sha256(seed, DOWNLOAD))
    assert path.ztun.alive()
    with path.connect(ECHO_PORT) as other:  # a new flow after it all
        other.sendall(b"after the garbage")
        assert other.recv(100) == b"after the garbage"
    moved = stack_counters(path) - before
    expected = Counter(reason for reason, _ in frames)
    for reason, per_round in expected.items():
        # An overlapping pair is one discarded datagram: counted once.
        least = ROUNDS if reason == "fragment_overlap" else per_round * ROUNDS
        assert moved[reason] >= least, (reason, moved)
