"""`--icmp direct` on macOS, through the forwarder, at the socket boundary.

MOCK NOTICE: no XNU kernel here. :class:`XnuIcmp` (tests/unit/xnu_icmp.py) stands for
macOS's ICMP datagram sockets, every byte as XNU writes and reads them; their
descriptors are real, so the event loop watches them as it would real sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import threading
from collections import Counter

from tests.unit.xnu_icmp import XnuIcmp
from ztun.icmp_direct import IcmpForwarder
from ztun.icmp_sockets import DarwinEchoCodec
from ztun.stack import IcmpEchoRequest, IcmpMode, SystemStack
from ztun.wire import IcmpPacket, Ipv4Packet, build_icmp_echo, parse_ip

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")
APP, OTHER_APP = ipaddress.IPv4Address("172.19.0.1"), ipaddress.IPv4Address("172.19.0.2")
TARGET = "192.0.2.9"


def request(stack: SystemStack, app: ipaddress.IPv4Address, ident: int, seq: int, data: bytes):  # type: ignore[no-untyped-def]
    packet = build_icmp_echo(app, ipaddress.ip_address(TARGET), ident, seq, data)
    event = stack.receive(memoryview(packet), 0.0)
    assert isinstance(event, IcmpEchoRequest)
    return event


def test_each_app_gets_its_own_replies_with_its_own_identifier() -> None:
    async def main() -> list[bytearray]:
        kernel = XnuIcmp()
        stack = SystemStack(inet4=INET4, inet6=None, icmp=IcmpMode.DIRECT)
        written: list[bytearray] = []
        stats: Counter[str] = Counter()
        forwarder = IcmpForwarder(
            stack, written.append, stats, threading.Lock(),
            codec=DarwinEchoCodec(random.Random(3)), open_socket=kernel.open,
        )  # fmt: skip
        try:
            forwarder.on_request(request(stack, APP, 100, 1, b"first app"), 0.0)
            forwarder.on_request(request(stack, OTHER_APP, 100, 1, b"second app"), 0.0)
            forwarder.on_request(request(stack, APP, 100, 2, b"first again"), 0.1)
            idents = [int.from_bytes(m[4:6], "big") for m, _ in kernel.sent]
            assert len(kernel.sockets) == 2 and idents[0] == idents[2] != idents[1]
            assert [m[:2] for m, _ in kernel.sent] == [bytes([8, 0])] * 3  # ECHO, code 0
            kernel.answer()  # 3 replies, each to both sockets
            await asyncio.wait_for(kernel.drained.wait(), 5.0)
        finally:
            forwarder.close()
        assert all(sock.closed for sock in kernel.sockets)
        return written

    written = asyncio.run(main())
    seen = []
    for packet in written:
        ip = parse_ip(packet)
        assert isinstance(ip, Ipv4Packet)
        icmp = IcmpPacket.checked(ip.payload)
        assert icmp.type == 0 and icmp.verify_checksum()
        seen.append((str(ipaddress.ip_address(ip.dst)), str(ipaddress.ip_address(ip.src)),
                     icmp.ident, icmp.seq, bytes(icmp.data)))  # fmt: skip
    assert sorted(seen) == [
        ("172.19.0.1", TARGET, 100, 1, b"first app"),
        ("172.19.0.1", TARGET, 100, 2, b"first again"),
        ("172.19.0.2", TARGET, 100, 1, b"second app"),
    ]


def test_a_closed_session_gives_its_identifier_back() -> None:
    async def main() -> None:
        kernel = XnuIcmp()
        codec = DarwinEchoCodec(random.Random(5))
        stack = SystemStack(inet4=INET4, inet6=None, icmp=IcmpMode.DIRECT)
        forwarder = IcmpForwarder(
            stack, lambda p: None, Counter(), threading.Lock(), codec=codec,
            open_socket=kernel.open,
        )  # fmt: skip
        forwarder.on_request(request(stack, APP, 7, 1, b""), 0.0)
        first = int.from_bytes(kernel.sent[0][0][4:6], "big")
        forwarder.expire(1000.0)
        assert kernel.sockets[0].closed and first not in codec._held

    asyncio.run(main())
