"""Regenerate ``wire_vectors.py`` from real packets captured between two throwaway namespaces.

Run as root from the repository root::

    .venv/bin/python tests/unit/wire/capture_vectors.py

It creates namespaces ``wirecap<pid>a`` / ``wirecap<pid>b`` joined by a veth pair
(created directly inside them, nothing touches the root namespace), turns TX checksum
offload off on both ends -- on ``lo`` it cannot be turned off and TCP/UDP checksums
stay partial -- and captures on the ``a`` end with an AF_PACKET socket while this
process generates traffic from ``a`` to ``b``: TCP connect + request, a DNS query, a
datagram to a closed port, fragmented UDP (with a hop-by-hop header over IPv6), ping.
An AF_PACKET socket rather than tcpdump: the kernel queues each packet to it before
the protocol handler runs, so once a reply has been received its packets are in the
queue -- no "stop tcpdump and hope it flushed" race.  Both namespaces are deleted in
a ``finally``.  Not a test: pytest does not collect it.

Regenerating changes ISNs, ports, IP IDs and hence checksums: ``test_syn_fields`` in
test_wire_ipv4.py asserts two literal values of the committed capture; update them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Packet

from ztun.netns import in_netns
from ztun.tools import tool

OUT = Path(__file__).resolve().parent / "wire_vectors.py"
CMD_TIMEOUT = 10.0
ETH_P_ALL = 0x0003
ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = b"\x08\x00"
ETHERTYPE_IPV6 = b"\x86\xdd"
CAPTURE_RCVBUF = 8 << 20
MAX_FRAMES = 10_000
A4, B4 = "10.99.0.1", "10.99.0.2"
A6, B6 = "fd00:99::1", "fd00:99::2"
HTTP_PORT, DNS_PORT, SINK_PORT, CLOSED_PORT = 8080, 53, 5001, 9
FRAG_DATAGRAM = 2000  # > veth MTU 1500: two fragments
DNS_QUERY = bytes.fromhex(
    "abcd01000001000000000000076578616d706c6503636f6d0000010001"
)  # id 0xabcd, RD, one question: example.com A IN
HTTP_REQUEST = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
# Hop-by-hop header with a Router Alert option (RFC 2711) + PadN; the kernel fills byte 0.
HOPOPTS = bytes.fromhex("0000050200000100")


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=CMD_TIMEOUT, stdout=subprocess.DEVNULL)


def _server_sockets(stack: contextlib.ExitStack) -> dict[str, socket.socket]:
    """Listening sockets in ``b``: TCP 8080, UDP 53 and UDP 5001 for both families."""
    socks: dict[str, socket.socket] = {}
    for family, host in ((socket.AF_INET, B4), (socket.AF_INET6, B6)):
        tag = "4" if family == socket.AF_INET else "6"
        tcp = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        tcp.bind((host, HTTP_PORT))
        tcp.listen(1)
        socks["tcp" + tag] = tcp
        for name, port in (("dns", DNS_PORT), ("sink", SINK_PORT)):
            udp = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            udp.bind((host, port))
            socks[name + tag] = udp
    for sock in socks.values():
        sock.settimeout(CMD_TIMEOUT)
    return socks


def _client_traffic(stack: contextlib.ExitStack, servers: dict[str, socket.socket]) -> None:
    for family, host in ((socket.AF_INET, B4), (socket.AF_INET6, B6)):
        tag = "4" if family == socket.AF_INET else "6"
        with socket.create_connection((host, HTTP_PORT), timeout=CMD_TIMEOUT) as cli:
            conn, _ = servers["tcp" + tag].accept()
            with conn:
                cli.sendall(HTTP_REQUEST)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 204 No Content\r\n\r\n")
                cli.recv(4096)
        with socket.socket(family, socket.SOCK_DGRAM) as cli:
            cli.sendto(DNS_QUERY, (host, DNS_PORT))
            servers["dns" + tag].recvfrom(512)
        with socket.socket(family, socket.SOCK_DGRAM) as cli:
            cli.settimeout(CMD_TIMEOUT)
            cli.connect((host, CLOSED_PORT))
            cli.send(b"closed port\n")
            # The ICMP port unreachable comes back as ECONNREFUSED on a connected socket.
            with contextlib.suppress(ConnectionRefusedError):
                cli.recv(512)
        with socket.socket(family, socket.SOCK_DGRAM) as cli:
            if family == socket.AF_INET6:
                cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HOPOPTS)
            cli.sendto(bytes(i & 0xFF for i in range(FRAG_DATAGRAM)), (host, SINK_PORT))
            servers["sink" + tag].recvfrom(4096)


def traffic(ns_a: str, ns_b: str, veth_a: str) -> list[bytes]:
    """Generate the traffic; return every IP packet seen on the ``a`` end, in order."""
    with contextlib.ExitStack() as stack:
        with in_netns(ns_b):
            servers = _server_sockets(stack)
        with in_netns(ns_a):
            cap = stack.enter_context(
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            )
            cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_RCVBUF)
            cap.bind((veth_a, 0))
            _client_traffic(stack, servers)
        for host in (B4, B6):
            run([tool("ip"), "netns", "exec", ns_a, tool("ping"), "-c1", "-W2", "-s16", host])
        cap.setblocking(False)
        frames: list[bytes] = []
        for _ in range(MAX_FRAMES):
            try:
                frames.append(cap.recv(65535))
            except BlockingIOError:
                break
    return [f[ETH_HEADER_LEN:] for f in frames if f[12:14] in (ETHERTYPE_IPV4, ETHERTYPE_IPV6)]


def pick(packets: list[bytes]) -> dict[str, bytes]:
    """Choose one packet per vector name (the first that matches)."""

    def tcp_payload(p: Packet) -> bytes:
        return bytes(p[TCP].payload)

    frag6 = IPv6ExtHdrFragment
    rules: dict[str, Callable[[Packet], bool]] = {
        "IPV4_TCP_SYN": lambda p: IP in p and TCP in p and p[TCP].flags == "S",
        "IPV4_TCP_SYNACK": lambda p: IP in p and TCP in p and p[TCP].flags == "SA",
        "IPV4_TCP_DATA": lambda p: IP in p and TCP in p and tcp_payload(p)[:3] == b"GET",
        "IPV6_TCP_SYN": lambda p: IPv6 in p and TCP in p and p[TCP].flags == "S",
        "IPV6_TCP_DATA": lambda p: IPv6 in p and TCP in p and tcp_payload(p)[:3] == b"GET",
        "IPV4_UDP_DNS_QUERY": lambda p: (
            IP in p and ICMP not in p and UDP in p and p[UDP].dport == DNS_PORT
        ),
        "IPV6_UDP_DNS_QUERY": lambda p: (
            IPv6 in p and ICMPv6DestUnreach not in p and UDP in p and p[UDP].dport == DNS_PORT
        ),
        "IPV4_UDP_CLOSED_PORT": lambda p: (
            IP in p and ICMP not in p and UDP in p and p[UDP].dport == CLOSED_PORT
        ),
        "IPV4_ICMP_PORT_UNREACH": lambda p: IP in p and ICMP in p and p[ICMP].type == 3,
        "IPV6_UDP_CLOSED_PORT": lambda p: (
            IPv6 in p and ICMPv6DestUnreach not in p and UDP in p and p[UDP].dport == CLOSED_PORT
        ),
        "IPV6_ICMP_PORT_UNREACH": lambda p: ICMPv6DestUnreach in p,
        "IPV4_ICMP_ECHO_REQUEST": lambda p: IP in p and ICMP in p and p[ICMP].type == 8,
        "IPV4_ICMP_ECHO_REPLY": lambda p: IP in p and ICMP in p and p[ICMP].type == 0,
        "IPV6_ICMP_ECHO_REQUEST": lambda p: ICMPv6EchoRequest in p,
        "IPV6_ICMP_ECHO_REPLY": lambda p: ICMPv6EchoReply in p,
        "IPV4_UDP_FRAG_FIRST": lambda p: IP in p and p[IP].flags.MF and p[IP].frag == 0,
        "IPV4_UDP_FRAG_LAST": lambda p: IP in p and not p[IP].flags.MF and p[IP].frag > 0,
        "IPV6_HBH_FRAG_FIRST": lambda p: (
            IPv6ExtHdrHopByHop in p and frag6 in p and p[frag6].offset == 0
        ),
        "IPV6_HBH_FRAG_LAST": lambda p: (
            IPv6ExtHdrHopByHop in p and frag6 in p and p[frag6].offset > 0 and not p[frag6].m
        ),
    }
    chosen: dict[str, bytes] = {}
    for ip in packets:
        parsed: Packet = IP(ip) if ip[0] >> 4 == 4 else IPv6(ip)
        for name, rule in rules.items():
            if name not in chosen and rule(parsed):
                chosen[name] = ip
    missing = sorted(set(rules) - set(chosen))
    if missing:
        raise SystemExit(f"capture of {len(packets)} packets lacks {missing}")
    return {name: chosen[name] for name in rules}


def render(vectors: dict[str, bytes]) -> str:
    lines = [
        '"""Real packets captured on a veth between two throwaway netns (capture_vectors.py).',
        "",
        f"Linux {os.uname().release}; TX checksum offload off, so every checksum is complete.",
        "Generated -- do not edit by hand.",
        '"""',
        "",
    ]
    for name, data in vectors.items():
        lines.append(f"{name} = bytes.fromhex(")
        lines.extend(f'    "{chunk}"' for chunk in textwrap.wrap(data.hex(), 88))
        lines.append(")")
    return "\n".join(lines) + "\n"


def main() -> None:
    pid = os.getpid()
    ns_a, ns_b = f"wirecap{pid}a", f"wirecap{pid}b"
    veth_a, veth_b = f"wc{pid}a", f"wc{pid}b"
    created: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            run([tool("ip"), "netns", "add", ns])
            created.append(ns)
        run(
            [
                tool("ip"),
                "link",
                "add",
                veth_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                veth_b,
                "netns",
                ns_b,
            ]
        )
        for ns, dev, addr4, addr6 in ((ns_a, veth_a, A4, A6), (ns_b, veth_b, B4, B6)):
            ip = [tool("ip"), "netns", "exec", ns, tool("ip")]
            run([*ip, "link", "set", "lo", "up"])
            run([*ip, "link", "set", dev, "up"])
            run([*ip, "addr", "add", f"{addr4}/24", "dev", dev])
            run([*ip, "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad"])
            run([tool("ip"), "netns", "exec", ns, tool("ethtool"), "-K", dev, "tx", "off"])
        packets = traffic(ns_a, ns_b, veth_a)
        OUT.write_text(render(pick(packets)))
        print(f"wrote {OUT} from {len(packets)} packets")
    finally:
        for ns in reversed(created):  # deleting a namespace deletes its veth end too
            subprocess.run([tool("ip"), "netns", "del", ns], check=False, timeout=CMD_TIMEOUT)


if __name__ == "__main__":
    main()
