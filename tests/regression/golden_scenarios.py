"""The golden scenarios: what each one does, and which captures it compares.

Each scenario names its captures ``<scenario>-tun`` (the TUN: the app's packets, ztun's
answers and its NAT hairpin) and ``<scenario>-link`` (client-proxy: the SOCKS5
conversation); each capture has a golden ``pcaps/<name>.pcap/.toml/.txt``.

TCP through the hairpin runs twice. With the kernel NAT (ztun's default) the TUN shows
something else -- the program redirects the app's and the listener's segments before the
capture tap, so only what enters the TUN is seen: the SYN ztun reads, and every
rewritten segment inbound -- so that view has goldens of its own,
``<scenario>-kernel-tun``. With ``--no-kernel-nat`` ztun's stack rewrites every segment
and the TUN shows both directions of both flows (``<scenario>-tun``). Both runs compare
their client-proxy link against the same ``<scenario>-link``: what the proxy sees must
not depend on which of them rewrote.

Drivers never assert on what the app sees: a broken ztun must show up as a golden diff,
not as an app-level timeout, so the negative tests prove the diff is what catches it.
App-level surprises are recorded in ``bench.notes`` and shown with a failure.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from golden_bench import (
    CLOSED_PORT,
    DNS_NAME,
    DNS_PORT,
    ECHO_PORT,
    TUN_V4,
    TUN_V6,
    UDP_PORT,
    Bench,
    Where,
    scenario_rng,
)
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP
from scapy.packet import Raw

from harness import packets

PAYLOAD_SIZE = 1024
DNS_QUERY_ID = 0x2A05
ECHO_IDENT = 0x6774
GRE = 47
ICMP_TIMESTAMP_REQUEST = 13
FRAGMENT_SIZE = 32


@dataclass(frozen=True)
class Scenario:
    name: str
    captures: tuple[Where, ...]
    drive: Callable[[Bench], None]
    ztun_args: tuple[str, ...] = ()
    dns: bool = False
    doc: str = ""
    variant: str = ""  # "kernel": the TUN golden of the kernel NAT's view

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def golden(self, where: Where) -> str:
        if where == "tun" and self.variant:
            return f"{self.name}-{self.variant}-{where}"
        return f"{self.name}-{where}"


def _recv_exactly(sock: socket.socket, size: int, bench: Bench) -> bytes:
    data = b""
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        bench.notes.append(f"app read failed after {len(data)} bytes: {exc!r}")
    return data


def _tcp_exchange(bench: Bench, *, v6: bool) -> None:
    """Handshake, 1 KiB up, the same 1 KiB echoed down, FIN from the app, FIN back."""
    payload = scenario_rng(f"tcp{6 if v6 else 4}").randbytes(PAYLOAD_SIZE)
    with bench.tcp(v6=v6) as sock:
        sock.connect((bench.server(v6=v6), ECHO_PORT))
        sock.sendall(payload)
        echoed = _recv_exactly(sock, PAYLOAD_SIZE, bench)
        if echoed != payload:
            bench.notes.append(f"echo returned {len(echoed)} bytes, not the {PAYLOAD_SIZE} sent")
        sock.shutdown(socket.SHUT_WR)
        try:
            if sock.recv(1) != b"":
                bench.notes.append("data after the echo where the server's FIN was due")
        except OSError as exc:
            bench.notes.append(f"no FIN from the server: {exc!r}")


def drive_tcp4(bench: Bench) -> None:
    _tcp_exchange(bench, v6=False)


def drive_tcp6(bench: Bench) -> None:
    _tcp_exchange(bench, v6=True)


def drive_refused(bench: Bench) -> None:
    """A connection to a closed port: ztun completes the local handshake (the kernel
    listener accepts), the proxy answers "connection refused", ztun resets the app."""
    with bench.tcp() as sock:
        try:
            sock.connect((bench.server_v4, CLOSED_PORT))
            data = sock.recv(1)
            bench.notes.append(f"expected a reset, read {data!r}")
        except (ConnectionResetError, ConnectionRefusedError):
            pass
        except OSError as exc:
            bench.notes.append(f"expected a reset, got {exc!r}")


def drive_dns(bench: Bench) -> None:
    """One A query to dnsmasq on the server, carried by UDP ASSOCIATE."""
    query = bytes(DNS(id=DNS_QUERY_ID, rd=1, qd=DNSQR(qname=DNS_NAME, qtype="A")))
    with bench.udp() as sock:
        sock.sendto(query, (bench.server_v4, DNS_PORT))
        try:
            answer = sock.recv(4096)
            if DNS(answer).id != DNS_QUERY_ID:
                bench.notes.append("DNS answer with another id")
        except OSError as exc:
            bench.notes.append(f"no DNS answer: {exc!r}")


def drive_icmp_echo(bench: Bench) -> None:
    """One echo request per family from an app (raw socket), answered by ztun itself."""
    payload = scenario_rng("icmp-echo").randbytes(32)
    for v6 in (False, True):
        family = socket.AF_INET6 if v6 else socket.AF_INET
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        request_type, reply_type = (128, 129) if v6 else (8, 0)
        ident = ECHO_IDENT.to_bytes(2, "big")
        if v6:
            # The kernel fills in a raw ICMPv6 socket's checksum (RFC 3542 3.1).
            message = bytes([request_type, 0, 0, 0]) + ident + b"\x00\x01" + payload
        else:
            message = bytes(ICMP(type=request_type, id=ECHO_IDENT, seq=1) / Raw(payload))
        sock = bench.client.socket(family, socket.SOCK_RAW, proto)
        sock.settimeout(2.0)
        with sock:
            sock.sendto(message, (bench.server(v6=v6), 0))
            try:
                while True:
                    data = sock.recv(65535)
                    at = 0 if v6 else (data[0] & 0x0F) * 4
                    if data[at] == reply_type and data[at + 4 : at + 6] == ident:
                        break
            except OSError as exc:
                bench.notes.append(f"no echo reply (IPv{6 if v6 else 4}): {exc!r}")


def bad_packets(bench: Bench) -> list[tuple[str, object]]:
    """Each crafted packet, in order; the golden shows what ztun answered to each."""
    rng = scenario_rng("bad-packets")
    s4, s6 = bench.server_v4, bench.server_v6

    def seq() -> int:
        return rng.getrandbits(32)

    syn = packets.tcp_syn(rng, TUN_V4, s4, ECHO_PORT)
    udp4 = packets.udp(rng, TUN_V4, s4, UDP_PORT, rng.randbytes(64))
    udp6 = packets.udp(rng, TUN_V6, s6, UDP_PORT, rng.randbytes(64))
    return [
        # ztun answers with a reset (RFC 793: a segment for no connection)
        ("ACK for no connection", packets.tcp(rng, TUN_V4, s4, ECHO_PORT, flags="A", ack=seq())),
        (
            "data for no connection",
            packets.tcp(rng, TUN_V4, s4, ECHO_PORT, flags="PA", ack=seq(), payload=b"no such flow"),
        ),
        ("FIN for no connection", packets.tcp(rng, TUN_V4, s4, ECHO_PORT, flags="FA", ack=seq())),
        (
            "IPv6 ACK for no connection",
            packets.tcp(rng, TUN_V6, s6, ECHO_PORT, flags="A", ack=seq()),
        ),
        # ztun says nothing
        ("RST for no connection", packets.tcp(rng, TUN_V4, s4, ECHO_PORT, flags="R")),
        ("SYN with a bad TCP checksum", packets.with_bad_l4_checksum(rng, syn)),
        (
            "SYN with a bad IPv4 header checksum",
            packets.with_bad_ip_checksum(rng, packets.tcp_syn(rng, TUN_V4, s4, ECHO_PORT)),
        ),
        ("IPv4 header cut at 12 bytes", packets.truncated(rng, syn, keep=12)),
        ("IPv4 header length 60 in 20 bytes", b"\x4f" + bytes(19)),
        ("first IPv4 fragment", packets.fragments(rng, udp4, FRAGMENT_SIZE)[0]),
        ("first IPv6 fragment", packets.fragments(rng, udp6, FRAGMENT_SIZE)[0]),
        (
            "ICMP echo with a bad checksum",
            packets.with_bad_l4_checksum(rng, packets.icmp_echo(rng, TUN_V4, s4, payload=b"x" * 8)),
        ),
        (
            "ICMPv6 echo with a bad checksum",
            packets.with_bad_l4_checksum(rng, packets.icmp_echo(rng, TUN_V6, s6, payload=b"x" * 8)),
        ),
        (
            "ICMP timestamp request",
            # scapy fills the originate timestamp with the clock unless it is given
            IP(src=TUN_V4, dst=s4, id=rng.randrange(1 << 16))
            / ICMP(type=ICMP_TIMESTAMP_REQUEST, ts_ori=0, ts_rx=0, ts_tx=0),
        ),
        (
            "GRE (a protocol ztun does not carry)",
            IP(src=TUN_V4, dst=s4, proto=GRE, id=rng.randrange(1 << 16)) / Raw(rng.randbytes(16)),
        ),
        ("not IP at all (version 9)", packets.garbage(rng, 24, version=9)),
    ]


def drive_bad_packets(bench: Bench) -> None:
    with bench.barrier() as barrier:
        barrier()  # ztun is answering before the first crafted packet goes in
        for _label, packet in bad_packets(bench):
            bench.inject(packet)
            barrier()


def drive_udp_rejected(bench: Bench) -> None:
    """UDP to a rejected outbound: ztun answers ICMP / ICMPv6 port unreachable."""
    for v6 in (False, True):
        payload = scenario_rng(f"udp-rejected-{v6}").randbytes(48)
        with bench.udp(v6=v6) as sock:
            sock.connect((bench.server(v6=v6), UDP_PORT))
            sock.send(payload)
            try:
                sock.recv(4096)
                bench.notes.append(f"IPv{6 if v6 else 4}: an answer where a refusal was due")
            except ConnectionRefusedError:
                pass  # the ICMP error reached the app: it went through the TUN
            except OSError as exc:
                bench.notes.append(f"IPv{6 if v6 else 4}: no ICMP error: {exc!r}")


STACK = ("--no-kernel-nat",)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "tcp4",
        ("tun", "link"),
        drive_tcp4,
        ztun_args=STACK,
        doc="TCP handshake + 1 KiB each way + FIN through ztun (IPv4), the stack rewriting",
    ),
    Scenario(
        "tcp4",
        ("tun", "link"),
        drive_tcp4,
        variant="kernel",
        doc="the same with the kernel NAT rewriting after the SYN",
    ),
    Scenario("tcp6", ("tun", "link"), drive_tcp6, ztun_args=STACK, doc="the same over IPv6"),
    Scenario("tcp6", ("tun", "link"), drive_tcp6, variant="kernel", doc="IPv6, kernel NAT"),
    Scenario(
        "dns",
        ("tun", "link"),
        drive_dns,
        dns=True,
        doc="UDP DNS query/answer through SOCKS5 UDP ASSOCIATE",
    ),
    Scenario("icmp-echo", ("tun",), drive_icmp_echo, doc="ICMP/ICMPv6 echo answered by ztun"),
    Scenario(
        "refused",
        ("tun", "link"),
        drive_refused,
        ztun_args=STACK,
        doc="connection refused at the target: SOCKS5 reply 5, RST to the app",
    ),
    Scenario(
        "refused",
        ("tun", "link"),
        drive_refused,
        variant="kernel",
        doc="the same with the kernel NAT: the listener's reset goes through the kernel",
    ),
    Scenario(
        "bad-packets",
        ("tun",),
        drive_bad_packets,
        doc="crafted bad packets and what ztun answers (nothing or RST)",
    ),
    Scenario(
        "udp-rejected",
        ("tun",),
        drive_udp_rejected,
        ztun_args=("--udp-proxy", "reject://"),
        doc="UDP to a rejecting outbound: ICMP port unreachable",
    ),
)

BY_NAME = {s.id: s for s in SCENARIOS}
