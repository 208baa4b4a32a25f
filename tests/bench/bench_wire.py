"""Micro-benchmark of the ztun.wire per-packet path (plain script, not collected by pytest).

    .venv/bin/python tests/bench/bench_wire.py [--count N] [--seconds S]

Measures, on one 1500-byte IPv4/TCP packet rewritten in place, what the system stack
does per packet: checked parse of IP and TCP, read the flow key, NAT-rewrite both
addresses and ports, and fix both checksums -- incrementally with per-flow deltas
(RFC 1624), incrementally with deltas computed per packet, and by full recompute.
Each loop alternates between two NAT mappings so the packet stays valid; it is
checked at the end.  Every loop is bounded by --count and --seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from ztun.wire import (
    ACK,
    PSH,
    Ipv4Packet,
    TcpPacket,
    build_tcp,
    checksum_delta,
    incremental_update,
    internet_checksum,
)

MTU = 1500
IP_TCP_HEADERS = 40
APP, REMOTE = IPv4Address("172.19.0.1"), IPv4Address("93.184.216.34")
PEER, SERVER = IPv4Address("172.19.0.2"), IPv4Address("172.19.0.1")
APP_PORT, REMOTE_PORT, NAT_PORT, LISTEN_PORT = 51000, 443, 40123, 40001


def make_packet() -> bytearray:
    payload = bytes(i & 0xFF for i in range(MTU - IP_TCP_HEADERS))
    buf = build_tcp(
        APP, REMOTE, APP_PORT, REMOTE_PORT, seq=1, ack=1, flags=PSH | ACK, payload=payload
    )
    assert len(buf) == MTU
    return buf


# The two "NAT states" a packet flips between: (src, sport, dst, dport).
FORWARD = (APP.packed, APP_PORT, REMOTE.packed, REMOTE_PORT)
HAIRPIN = (PEER.packed, NAT_PORT, SERVER.packed, LISTEN_PORT)


def flow_bytes(state: tuple[bytes, int, bytes, int]) -> tuple[bytes, bytes]:
    """(src+dst for the IP checksum, src+sport+dst+dport for the TCP checksum)."""
    src, sport, dst, dport = state
    return src + dst, src + sport.to_bytes(2, "big") + dst + dport.to_bytes(2, "big")


def step_precomputed(buf: bytearray, deltas: dict[bytes, tuple[int, int]]) -> None:
    """What SystemStack does per packet: flow lookup, 4 stores, 2 delta additions."""
    ip = Ipv4Packet.checked(buf)
    tcp = TcpPacket.checked(ip.payload)
    src = ip.src
    target = HAIRPIN if src == FORWARD[0] else FORWARD
    ip_delta, l4_delta = deltas[src]
    ip.src, ip.dst = target[0], target[2]
    tcp.src_port, tcp.dst_port = target[1], target[3]
    ip.adjust_checksum(ip_delta)
    tcp.adjust_checksum(l4_delta)


def step_per_packet_delta(buf: bytearray) -> None:
    """Incremental, but the RFC 1624 delta is computed from the old/new bytes each time."""
    ip = Ipv4Packet.checked(buf)
    tcp = TcpPacket.checked(ip.payload)
    src = ip.src
    old = FORWARD if src == FORWARD[0] else HAIRPIN
    new = HAIRPIN if old is FORWARD else FORWARD
    (old_ip, old_l4), (new_ip, new_l4) = flow_bytes(old), flow_bytes(new)
    ip.src, ip.dst = new[0], new[2]
    tcp.src_port, tcp.dst_port = new[1], new[3]
    ip.checksum = incremental_update(ip.checksum, old_ip, new_ip)
    tcp.checksum = incremental_update(tcp.checksum, old_l4, new_l4)


def step_full_recompute(buf: bytearray) -> None:
    """Baseline: same parse and rewrite, both checksums recomputed over all 1500 bytes."""
    ip = Ipv4Packet.checked(buf)
    tcp = TcpPacket.checked(ip.payload)
    new = HAIRPIN if ip.src == FORWARD[0] else FORWARD
    ip.src, ip.dst = new[0], new[2]
    tcp.src_port, tcp.dst_port = new[1], new[3]
    ip.fill_checksum()
    tcp.fill_checksum(new[0], new[2])


def step_parse_only(buf: bytearray) -> None:
    ip = Ipv4Packet.checked(buf)
    tcp = TcpPacket.checked(ip.payload)
    _ = (ip.src, ip.dst, tcp.src_port, tcp.dst_port)


def naive_checksum(data: bytes) -> int:
    """Word-by-word Python loop: what the big-int trick replaces."""
    total = 0
    for i in range(0, len(data) - 1, 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def measure(step: Callable[[], object], count: int, seconds: float, rounds: int = 5) -> float:
    """Best calls/second over ``rounds`` rounds of ``count // rounds`` calls.

    Timed in process CPU time and best-of, like ``timeit``: on a shared machine wall
    time mostly measures the neighbours.  The whole case stops after about ``seconds``
    of wall time, whatever ``count`` says.
    """
    per_round = max(1, count // rounds)
    deadline = time.perf_counter() + seconds
    best = 0.0
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(per_round):
            step()
        elapsed = max(time.process_time() - start, 1e-9)
        best = max(best, per_round / elapsed)
        if time.perf_counter() > deadline:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="max iterations per case")
    parser.add_argument("--seconds", type=float, default=2.0, help="max seconds per case")
    args = parser.parse_args()

    buf = make_packet()
    (fwd_ip, fwd_l4), (hp_ip, hp_l4) = flow_bytes(FORWARD), flow_bytes(HAIRPIN)
    deltas = {  # precomputed once per flow, as the NAT table stores them
        FORWARD[0]: (checksum_delta(fwd_ip, hp_ip), checksum_delta(fwd_l4, hp_l4)),
        HAIRPIN[0]: (checksum_delta(hp_ip, fwd_ip), checksum_delta(hp_l4, fwd_l4)),
    }
    raw = bytes(buf)
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("parse only (IP+TCP checked, flow key)", lambda: step_parse_only(buf), args.count),
        (
            "parse+NAT+incremental (per-flow delta)",
            lambda: step_precomputed(buf, deltas),
            args.count,
        ),
        (
            "parse+NAT+incremental (delta per packet)",
            lambda: step_per_packet_delta(buf),
            args.count,
        ),
        ("parse+NAT+full recompute (baseline)", lambda: step_full_recompute(buf), args.count),
        ("internet_checksum(1500 B) alone", lambda: internet_checksum(raw), args.count),
        (
            "naive Python loop checksum(1500 B)",
            lambda: naive_checksum(raw),
            max(1, args.count // 100),
        ),
    ]
    print(
        f"ztun.wire micro-benchmark, {MTU}-byte IPv4/TCP packet, CPython "
        f"{'.'.join(map(str, __import__('sys').version_info[:3]))}"
    )
    results = {}
    for name, step, count in cases:
        rate = measure(step, count, args.seconds)
        results[name] = rate
        print(
            f"  {name:44s} {rate / 1e3:9.1f} kpkt/s  {rate * MTU * 8 / 1e9:7.2f} Gbit/s"
            f"  {1e9 / rate:8.0f} ns/pkt"
        )
    ip = Ipv4Packet.checked(buf)
    tcp = TcpPacket.checked(ip.payload)
    assert ip.verify_checksum() and tcp.verify_checksum(ip.src, ip.dst), "packet corrupted"
    speedup = results[cases[1][0]] / results[cases[3][0]]
    print(f"  incremental (per-flow delta) vs full recompute: {speedup:.2f}x")


if __name__ == "__main__":
    main()
