"""The engine runs a device that has no descriptor, as a Wintun adapter is one.

Such a device's `fileno()` raises; it offers only `wait_readable(timeout)` (Wintun: a
wait on its read event). The device here is built over one end of an AF_UNIX datagram
socketpair -- a real kernel object carrying whole packets -- whose descriptor it hides,
so the event loop cannot watch it and the engine must read it from its reader thread.
A UDP datagram goes in as an IP packet, out of a direct association to a real UDP
socket on loopback, and the answer comes back as an IP packet, bytes checked.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct

import pytest

from ztun.engine import Engine
from ztun.outbound import DirectOutbound
from ztun.router import Router
from ztun.stack import SystemStack
from ztun.tun.base import DeviceError, DeviceInfo, has_descriptor, wait_fd_readable
from ztun.wire import build_udp

pytestmark = pytest.mark.linux  # elsewhere only 127.0.0.1 is on loopback

#: The TUN's network, on loopback so the engine's hairpin listener (on the network's
#: second address) can bind here without a real TUN: Linux answers for all of 127/8.
INET4 = ipaddress.IPv4Interface("127.19.0.1/30")
APP_PORT = 40000
TIMEOUT = 10.0


class EventOnlyDevice(DeviceInfo):
    """A TUN the way Wintun is one: packets in and out, a read event, no descriptor."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._name, self._index, self._mtu = "evt0", 0, 1500
        self.waits = 0
        self.woken = False

    def fileno(self) -> int:
        raise DeviceError(errno.EOPNOTSUPP, "no descriptor: wait with wait_readable()")

    def wait_readable(self, timeout: float) -> bool:
        self.waits += 1
        return wait_fd_readable(self._sock.fileno(), timeout)

    def wake(self) -> None:
        self.woken = True

    def read_into(self, buf: memoryview) -> int:
        return self._sock.recv_into(buf)

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        return self._sock.send(packet)

    write_frame = write

    def close(self) -> None:
        self._sock.close()


def udp_of(packet: bytes) -> tuple[str, int, str, int, bytes]:
    """(source, source port, destination, destination port, payload) of an IPv4/UDP
    packet: RFC 791 (IHL in the low nibble of byte 0, protocol at 9, addresses at 12
    and 16), RFC 768 (ports at 0 and 2, length at 4, 8-byte header)."""
    ihl = (packet[0] & 0x0F) * 4
    assert packet[0] >> 4 == 4 and packet[9] == socket.IPPROTO_UDP
    sport, dport, length = struct.unpack_from("!HHH", packet, ihl)
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return src, sport, dst, dport, packet[ihl + 8 : ihl + length]


async def carry_one_datagram() -> tuple[bytes, tuple[str, int, str, int, bytes], bool, int, bool]:
    loop = asyncio.get_running_loop()
    tun, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    app.setblocking(False)
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    device = EventOnlyDevice(tun)
    assert not has_descriptor(device)
    direct = DirectOutbound()
    router = Router(outbounds={"default": direct, "direct": direct}, sniff_timeout=None)
    engine = Engine(device, SystemStack(inet4=INET4, inet6=None), router, splice=False)
    assert engine.tun_thread  # not asked for: the device leaves no other way
    engine.start()
    try:
        port = echo.getsockname()[1]
        app.send(build_udp(INET4.ip.packed, bytes([127, 0, 0, 1]), APP_PORT, port, b"ping"))
        async with asyncio.timeout(TIMEOUT):
            got, peer = await loop.sock_recvfrom(echo, 2048)
            await loop.sock_sendto(echo, b"pong", peer)
            reply = await loop.sock_recv(app, 65535)
        threaded = engine.pump is not None and engine.pump.is_alive()
    finally:
        engine.stop()
        device.close()
        app.close()
        echo.close()
    return got, udp_of(reply), threaded, device.waits, device.woken


def test_a_device_without_a_descriptor_is_read_by_the_reader_thread() -> None:
    got, reply, threaded, waits, woken = asyncio.run(carry_one_datagram())
    assert got == b"ping"
    assert reply == ("127.0.0.1", reply[1], str(INET4.ip), APP_PORT, b"pong")
    assert reply[1] > 0
    assert threaded and waits >= 1  # the thread read it, waiting on the "event"
    assert woken  # stopping released the thread's wait at once (Wintun: SetEvent)
