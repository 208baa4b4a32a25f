"""The UDP uplink fast path: `Uplink` on loopback sockets, and the engine handing a routed
destination to the TUN pump thread (an fd:// device over a socketpair, a scripted SOCKS5
UDP ASSOCIATE server on 127.0.0.1; targets in TEST-NET-1 are only named, never reached).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from ztun.engine import Engine
from ztun.outbound import DirectOutbound, Socks5Outbound, Target
from ztun.outbound.socks5_proto import encode_udp_header
from ztun.outbound.uplink import GSO_MAX_SEGMENTS, Uplink, gso_runs
from ztun.router import Router
from ztun.stack import SystemStack
from ztun.tun import FdDevice
from ztun.wire import build_udp

H = bytes.fromhex
LOOPBACK = "127.0.0.1"
TEST_TIMEOUT = 10.0
EVENT_TIMEOUT = 5.0
APP = socket.inet_aton("10.0.0.2")
SERVER = socket.inet_aton("192.0.2.9")
SERVER_TARGET = Target("192.0.2.9", 5000)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A receiver on 127.0.0.1 and a non-blocking sender connected to it."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((LOOPBACK, 0))
    rx.settimeout(EVENT_TIMEOUT)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    yield rx, tx
    rx.close()
    tx.close()


def test_uplink_sends_each_payload_behind_the_header_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    rx, tx = pair
    uplink = Uplink(tx, encode_udp_header)
    header = uplink.header_for(SERVER_TARGET)
    assert header == H("0000 00 01 c0000209 1388")
    payloads = [b"one", memoryview(b"two"), bytearray(b"three"), b""]
    assert uplink.send(header, payloads) == (4, 11)
    assert [rx.recv(2048) for _ in payloads] == [header + bytes(p) for p in payloads]
    assert (uplink.datagrams, uplink.octets, uplink.dropped) == (4, 11, 0)


def test_uplink_drops_what_the_socket_refuses_and_goes_on(pair) -> None:  # type: ignore[no-untyped-def]
    rx, tx = pair
    uplink = Uplink(tx, encode_udp_header)
    too_big = bytes(70000)  # EMSGSIZE: no UDP datagram is that large
    assert uplink.send(b"h", [b"a", too_big, b"b"]) == (2, 2)
    assert [rx.recv(2048), rx.recv(2048)] == [b"ha", b"hb"]
    assert uplink.dropped == 1


@pytest.mark.parametrize(
    ("header_len", "sizes", "max_segment", "runs"),
    [
        (10, [100, 100, 100], 65000, [(0, 3)]),
        (10, [100, 100, 40], 65000, [(0, 3)]),  # a shorter datagram closes a run
        (10, [100, 40, 100, 100], 65000, [(0, 2), (2, 4)]),
        (10, [40, 100, 100], 65000, [(0, 1), (1, 3)]),  # a longer one starts a new run
        (10, [100, 100, 100], 0, [(0, 1), (1, 2), (2, 3)]),  # GSO off
        (10, [100, 100, 5, 5], 109, [(0, 1), (1, 2), (2, 4)]),  # 110 B segments too big
        (0, [0, 0, 7], 65000, [(0, 1), (1, 2), (2, 3)]),  # empty segments cannot be cut
        (10, [1400] * 100, 65000, [(0, 46), (46, 92), (92, 100)]),  # 64 KiB per send
        (10, [10] * 100, 65000, [(0, GSO_MAX_SEGMENTS), (GSO_MAX_SEGMENTS, 100)]),
    ],
)
def test_gso_runs(
    header_len: int, sizes: list[int], max_segment: int, runs: list[tuple[int, int]]
) -> None:
    assert gso_runs(header_len, sizes, max_segment) == runs


def test_uplink_batches_equal_sizes_in_one_gso_send(pair) -> None:  # type: ignore[no-untyped-def]
    rx, tx = pair
    uplink = Uplink(tx, encode_udp_header)
    header = uplink.header_for(SERVER_TARGET)
    payloads = [bytes([i]) * 1400 for i in range(20)] + [b"tail", b"x" * 300, b"y" * 300]
    assert uplink.send(header, payloads) == (len(payloads), sum(map(len, payloads)))
    # The receiver sees every datagram on its own, in order, each with its header.
    assert [rx.recv(4096) for _ in payloads] == [header + p for p in payloads]
    assert uplink.gso_sends == 2  # 20 x 1400 + "tail", then 2 x 300


def test_a_refused_gso_send_goes_out_one_by_one(pair) -> None:  # type: ignore[no-untyped-def]
    rx, tx = pair
    # SO_NO_CHECK (no UDP checksum) makes the kernel refuse GSO with EINVAL.
    tx.setsockopt(socket.SOL_SOCKET, 11, 1)
    uplink = Uplink(tx, encode_udp_header)
    payloads = [bytes([i]) * 500 for i in range(5)]
    assert uplink.send(b"h", payloads) == (5, 2500)
    assert [rx.recv(4096) for _ in payloads] == [b"h" + p for p in payloads]
    assert uplink.gso_sends == 0
    assert uplink.max_segment == 500  # 501-byte segments are not batched again
    assert uplink.send(b"h", payloads[:2]) == (2, 1000)
    assert [rx.recv(4096) for _ in range(2)] == [b"h" + p for p in payloads[:2]]


class UdpProxy:
    """A scripted UDP ASSOCIATE server: replies with its relay socket, records datagrams."""

    def __init__(self) -> None:
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind((LOOPBACK, 0))
        self.relay.setblocking(False)

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(3) == H("050100")
        writer.write(H("0500"))
        await reader.readexactly(10)
        port = self.relay.getsockname()[1]
        writer.write(H("05 00 00 01") + socket.inet_aton(LOOPBACK) + port.to_bytes(2, "big"))
        await reader.read()
        writer.close()

    async def recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.relay, 65535), EVENT_TIMEOUT)


async def _engine_scenario() -> None:
    proxy = UdpProxy()
    server = await asyncio.start_server(proxy.handler, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    app, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socks = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
    router = Router(outbounds={"default": socks, "direct": DirectOutbound()})
    # The hairpin listener binds the TUN address: loopback keeps it on this host.
    stack = SystemStack(inet4=ipaddress.IPv4Interface("127.0.0.1/8"), inet6=None)
    engine = Engine(FdDevice(tun.detach()), stack, router)
    engine.start()
    assert engine.pump is not None
    pump = engine.pump
    header = encode_udp_header(SERVER_TARGET)
    try:

        def app_sends(payload: bytes) -> None:
            app.send(build_udp(APP, SERVER, 40000, 5000, payload))

        # The first datagram waits for the association, through the loop.
        app_sends(b"first")
        assert await proxy.recv() == header + b"first"
        (flow,) = engine.udp
        uplink = engine.udp_uplink(flow)
        assert uplink is not None
        session = flow.session
        assert pump.udp_routes == {(session, SERVER, 5000): (uplink, header)}

        # Later ones go from the pump thread: the loop never sees them.
        payloads = [bytes([i]) * (100 + i) for i in range(30)]
        for payload in payloads:
            app_sends(payload)
        assert [await proxy.recv() for _ in payloads] == [header + p for p in payloads]
        assert engine.stats["udp_datagrams_up"] == 1

        # Another destination of the same session is routed on its own.
        app_sends_other = build_udp(APP, SERVER, 40000, 5001, b"other")
        app.send(app_sends_other)
        other_header = encode_udp_header(Target("192.0.2.9", 5001))
        assert await proxy.recv() == other_header + b"other"
        assert pump.udp_routes[(session, SERVER, 5001)] == (uplink, other_header)

        # Closing the flow takes its destinations back from the pump.
        engine.close_udp_flow(flow)
        assert pump.udp_routes == {}
        assert engine.udp_uplink(flow) is None
    finally:
        engine.stop()
        app.close()
        server.close()
        proxy.relay.close()
    # The stopped pump has closed the retired uplink's own descriptor.
    assert uplink._sock.fileno() == -1
    snapshot = engine.snapshot()
    assert snapshot["udp_datagrams_up"] == 32
    assert snapshot["udp_bytes_up"] == len(b"first") + sum(map(len, payloads)) + len(b"other")


def test_engine_hands_routed_destinations_to_the_pump() -> None:
    asyncio.run(asyncio.wait_for(_engine_scenario(), TEST_TIMEOUT))


def test_retiring_on_a_stopped_pump_closes_at_once() -> None:
    async def scenario() -> None:
        app, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        direct = DirectOutbound()
        router = Router(outbounds={"default": direct, "direct": direct})
        stack = SystemStack(inet4=ipaddress.IPv4Interface("127.0.0.1/8"), inet6=None)
        engine = Engine(FdDevice(tun.detach()), stack, router)
        engine.start()
        assert engine.pump is not None
        engine.stop()
        app.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        uplink = Uplink(sock, encode_udp_header)
        engine.pump.retire(uplink)
        assert sock.fileno() == -1

    asyncio.run(asyncio.wait_for(scenario(), TEST_TIMEOUT))


def test_socks5_association_uplink_outlives_the_association_descriptor() -> None:
    """The uplink owns a dup: closing the association never frees its descriptor number."""

    async def scenario() -> None:
        proxy = UdpProxy()
        server = await asyncio.start_server(proxy.handler, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assoc = await Socks5Outbound(f"socks5://{LOOPBACK}:{port}").open_udp(
                lambda source, payload: None
            )
            uplink = assoc.uplink()
            assert uplink is not None
            assoc.close()
            assert assoc.uplink() is None
            header = uplink.header_for(SERVER_TARGET)
            assert uplink.send(header, [b"late"]) == (1, 4)
            assert await proxy.recv() == header + b"late"
            uplink.close()
        finally:
            server.close()
            proxy.relay.close()

    asyncio.run(asyncio.wait_for(scenario(), TEST_TIMEOUT))


def test_a_shared_uplink_leaves_the_socket_to_its_association() -> None:
    """With the pump on the loop's thread, an uplink borrows the association's socket:
    closing the uplink must not close it (the association does, once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uplink = Uplink(sock, encode_udp_header, owns_socket=False)
    uplink.close()
    assert sock.fileno() != -1
    sock.close()
