"""The TUN pump's batch, bytes in and out over a socketpair standing in for the TUN (no
root): an engine failure on some datagrams costs those datagrams, never the data path."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections import Counter

from ztun.pump import TunPump
from ztun.stack import SystemStack, UdpDatagram
from ztun.tun import FdDevice
from ztun.wire import build_udp

INET4 = ipaddress.IPv4Interface("172.19.0.1/30")


def test_a_failing_delivery_is_counted_and_the_pump_goes_on() -> None:
    tun, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = asyncio.new_event_loop()
    stats: Counter[str] = Counter()
    delivered: list[list[UdpDatagram]] = []
    try:
        device = FdDevice(tun.fileno())
        pump = TunPump(
            device,
            SystemStack(inet4=INET4, inet6=None),
            threading.Lock(),
            loop,
            delivered.append,
            stats,
        )
        datagram = build_udp(bytes([172, 19, 0, 1]), bytes([192, 0, 2, 9]), 40000, 53, b"q")

        def broken(_datagrams: list[UdpDatagram]) -> None:
            raise RuntimeError("engine bug")

        app.send(datagram)
        assert pump._batch(broken) is True  # the pump keeps running
        assert stats["udp_delivery_error"] == 1
        app.send(datagram)
        assert pump._batch(delivered.append) is True
        assert [d.payload for batch in delivered for d in batch] == [b"q"]
        pump.stop()
    finally:
        loop.close()
        tun.close()
        app.close()
