"""The asyncio adapters against scripted servers on 127.0.0.1 (no root, nothing leaves lo).

A scripted proxy says exactly what a test needs - bytes after the reply, a 0.0.0.0 relay,
garbage, silence - which real servers cannot be made to do on demand. For pipelining it
can insist on what a real one only happens to do: read greeting and request before
answering anything (a client that did not pipeline deadlocks and the test fails), or read
the greeting with one recv() and throw the rest away, as microsocks does
(tests/integration/outbound/test_outbound_netns.py runs the real servers). Targets such as
192.0.2.x (TEST-NET-1) are only ever *named* in requests: the scripted proxy connects
nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar
from unittest.mock import Mock

import pytest

from ztun.outbound import (
    DirectOutbound,
    Outbound,
    OutboundError,
    ProxyAuthFailed,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    ProxyURL,
    Rejected,
    RejectOutbound,
    Socks5Outbound,
    Target,
    TargetUnreachable,
    handshake,
)
from ztun.outbound import socks5 as socks5_module
from ztun.outbound.direct import OWN_SOURCES, is_own_source
from ztun.outbound.socks5_proto import Command, PipelineState, encode_request, encode_udp_header

T = TypeVar("T")
H = bytes.fromhex
TEST_TIMEOUT = 10.0
EVENT_TIMEOUT = 5.0
LOOPBACK = "127.0.0.1"
TEST_NET = "192.0.2.9"
REPLY_OK_ZERO_V4 = H("05 00 00 01 00000000 0000")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))


@contextlib.asynccontextmanager
async def scripted_proxy(handler: Handler) -> AsyncIterator[int]:
    """A one-purpose TCP server on 127.0.0.1; yields its port."""
    server = await asyncio.start_server(handler, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _no_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readexactly(3) == H("050100")
    writer.write(H("0500"))


def _url(port: int, auth: str = "") -> str:
    return f"socks5://{auth}{LOOPBACK}:{port}"


# -- CONNECT ------------------------------------------------------------------------------------


def test_connect_returns_ready_socket_and_early_bytes() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _no_auth(reader, writer)
        seen.append(await reader.readexactly(10))
        # The reply and the server's banner in one segment: the banner must not be lost.
        writer.write(H("05 00 00 01 7f000001 0019") + b"220 ready\r\n")
        writer.write(await reader.readexactly(5))
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            stream = await Socks5Outbound(_url(port)).open_tcp(Target(TEST_NET, 25))
            with stream.sock:
                assert stream.early == b"220 ready\r\n"
                assert stream.sock.getblocking() is False
                assert stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(stream.sock, b"hello")
                assert await loop.sock_recv(stream.sock, 16) == b"hello"

    run(scenario())
    assert seen == [H("05 01 00 01 c0000209 0019")]


def test_connect_with_percent_encoded_credentials() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(4))
        writer.write(H("0502"))
        seen.append(await reader.readexactly(2 + 4 + 1 + 3))
        writer.write(H("0100"))
        seen.append(await reader.readexactly(4 + 1 + 9 + 2))
        writer.write(REPLY_OK_ZERO_V4)
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port, "us%40r:p%3As@"))
            stream = await outbound.open_tcp(Target("host.test", 443))
            stream.sock.close()

    run(scenario())
    assert seen == [
        H("05020002"),
        H("0104") + b"us@r" + H("03") + b"p:s",
        H("0501000309") + b"host.test" + H("01bb"),
    ]


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (
            H("05ff"),
            ProxyAuthFailed,
            "accepts none of the offered methods (no-auth); it "
            "probably wants a username and password",
        ),
        (
            H("0500 0502"),
            ProxyRefused,
            "refused CONNECT 192.0.2.9:80: connection not allowed by ruleset (0x02)",
        ),
        (H("0500 0504 0001"), ProxyRefused, "host unreachable (0x04)"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", ProxyProtocolError, "is this a SOCKS5 proxy?"),
        (H("05"), ProxyProtocolError, "closed the connection while awaiting the method"),
        (H("0500 0500 0001 7f"), ProxyProtocolError, "while awaiting the reply"),
    ],
    ids=["no-method", "not-allowed", "short-failure", "http", "eof-method", "eof-reply"],
)
def test_connect_failures_name_the_proxy(
    answer: bytes, error: type[OutboundError], message: str
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            with pytest.raises(error) as info:
                await Socks5Outbound(_url(port)).open_tcp(Target(TEST_NET, 80))
            assert message in str(info.value)
            assert f"proxy {LOOPBACK}:{port}" in str(info.value)
            if isinstance(info.value, ProxyRefused):
                assert info.value.reply_code == answer[3]

    run(scenario())


def test_wrong_password() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(H("0502"))
        await reader.readexactly(7)
        writer.write(H("0101"))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            with pytest.raises(ProxyAuthFailed, match=r"rejected username 'u'.*0x01"):
                await Socks5Outbound(_url(port, "u:bad@")).open_tcp(Target(TEST_NET, 80))

    run(scenario())


def test_silent_proxy_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never answer

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=0.2)
            with pytest.raises(ProxyTimeout, match=r"no SOCKS5 answer within 0.2s"):
                await outbound.open_tcp(Target(TEST_NET, 80))

    run(scenario())


def test_proxy_port_closed_is_unreachable() -> None:
    with socket.socket() as placeholder:  # bound, not listening: connect gets a RST
        placeholder.bind((LOOPBACK, 0))
        port = placeholder.getsockname()[1]
        outbound = Socks5Outbound(_url(port), connect_timeout=2)
        with pytest.raises(
            ProxyUnreachable, match=f"proxy {LOOPBACK}:{port}: [Cc]onnection refused"
        ):
            run(outbound.open_tcp(Target(TEST_NET, 80)))


def test_credentials_too_long_for_rfc1929_fail_at_construction() -> None:
    url = ProxyURL("socks5", LOOPBACK, 1080, "u" * 300, "p")
    with pytest.raises(ValueError, match="username must be 1 to 255 bytes"):
        Socks5Outbound(url)


def test_unknown_interface_is_a_configuration_error() -> None:
    outbound = Socks5Outbound(_url(1), bind_interface="ztnone0")
    with pytest.raises(OutboundError, match="cannot set bind_interface 'ztnone0'"):
        run(outbound.open_tcp(Target(TEST_NET, 80)))


def test_fwmark_is_set_before_connect() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _no_auth(reader, writer)
        await reader.readexactly(10)
        writer.write(REPLY_OK_ZERO_V4)
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), fwmark=0x2A)
            if os.geteuid() != 0:
                with pytest.raises(OutboundError, match="CAP_NET_ADMIN"):
                    await outbound.open_tcp(Target(TEST_NET, 80))
                return
            stream = await outbound.open_tcp(Target(TEST_NET, 80))
            with stream.sock:
                assert stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x2A

    run(scenario())


# -- UDP ASSOCIATE ------------------------------------------------------------------------------


class UdpProxy:
    """A scripted UDP ASSOCIATE server: one control connection, one relay socket."""

    def __init__(self, bound_host: str = "0.0.0.0") -> None:
        self.bound_host = bound_host
        self.request = b""
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind((LOOPBACK, 0))
        self.relay.setblocking(False)
        self.control_eof = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _no_auth(reader, writer)
        self.request = await reader.readexactly(10)
        port = self.relay.getsockname()[1]
        bound = socket.inet_aton(self.bound_host) + port.to_bytes(2, "big")
        writer.write(H("05 00 00 01") + bound)
        self.writer = writer
        await reader.read()
        self.control_eof.set()

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recvfrom(self.relay, 65535), EVENT_TIMEOUT)

    def close(self) -> None:
        self.relay.close()


class Inbox:
    """Collects on_datagram calls; `get()` awaits the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Target, bytes]] = asyncio.Queue()

    def __call__(self, source: Target, payload: bytes) -> None:
        self.queue.put_nowait((source, payload))

    async def get(self) -> tuple[Target, bytes]:
        return await asyncio.wait_for(self.queue.get(), EVENT_TIMEOUT)


def test_udp_relay_0000_means_the_proxy_address() -> None:
    async def scenario() -> None:
        proxy = UdpProxy(bound_host="0.0.0.0")
        inbox = Inbox()
        async with scripted_proxy(proxy.handler) as port:
            assoc = await Socks5Outbound(_url(port)).open_udp(inbox)
            try:
                assert proxy.request == H("05 03 00 01 00000000 0000")  # RFC: all zeros
                assert assoc.relay == Target(LOOPBACK, proxy.relay.getsockname()[1])
                assoc.send(Target(TEST_NET, 53), b"query")
                datagram, client = await proxy.recvfrom()
                assert datagram == H("0000 00 01 c0000209 0035") + b"query"

                source = Target("198.51.100.1", 53)
                for payload in (
                    encode_udp_header(source) + b"one",
                    H("0000 01 01 c6336401 0035") + b"a fragment: dropped",
                    H("0000 00 07") + b"garbage: dropped",
                    encode_udp_header(Target("example.net", 5353)) + b"two",
                ):
                    proxy.relay.sendto(payload, client)
                assert await inbox.get() == (source, b"one")
                assert await inbox.get() == (Target("example.net", 5353), b"two")
                assert assoc.dropped == 2
            finally:
                assoc.close()
                proxy.close()

    run(scenario())


def test_udp_ignores_datagrams_not_from_the_relay() -> None:
    async def scenario() -> None:
        proxy = UdpProxy(bound_host=LOOPBACK)
        inbox = Inbox()
        async with scripted_proxy(proxy.handler) as port:
            assoc = await Socks5Outbound(_url(port)).open_udp(inbox)
            try:
                assoc.send(Target(TEST_NET, 53), b"hi")
                _, client = await proxy.recvfrom()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    stranger.sendto(encode_udp_header(Target(TEST_NET, 1)) + b"spoof", client)
                proxy.relay.sendto(encode_udp_header(Target(TEST_NET, 53)) + b"real", client)
                assert await inbox.get() == (Target(TEST_NET, 53), b"real")
                assert inbox.queue.empty()
            finally:
                assoc.close()
                proxy.close()

    run(scenario())


def test_udp_handler_exception_does_not_end_the_association() -> None:
    async def scenario() -> None:
        proxy = UdpProxy()
        inbox = Inbox()
        calls = 0

        def flaky(source: Target, payload: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("handler bug")
            inbox(source, payload)

        async with scripted_proxy(proxy.handler) as port:
            assoc = await Socks5Outbound(_url(port)).open_udp(flaky)
            try:
                assoc.send(Target(TEST_NET, 53), b"x")
                _, client = await proxy.recvfrom()
                for payload in (b"first", b"second"):
                    proxy.relay.sendto(encode_udp_header(Target(TEST_NET, 53)) + payload, client)
                assert await inbox.get() == (Target(TEST_NET, 53), b"second")
                assert not assoc.closed.done()
            finally:
                assoc.close()
                proxy.close()

    run(scenario())


def test_proxy_closing_control_ends_association() -> None:
    async def scenario() -> None:
        proxy = UdpProxy()
        async with scripted_proxy(proxy.handler) as port:
            assoc = await Socks5Outbound(_url(port)).open_udp(Inbox())
            assert proxy.writer is not None
            proxy.writer.close()
            await asyncio.wait_for(asyncio.shield(assoc.closed), EVENT_TIMEOUT)
            assoc.send(Target(TEST_NET, 53), b"late")
            assert assoc.dropped == 1
            assoc.close()  # idempotent
            proxy.close()

    run(scenario())


def test_closing_association_closes_control() -> None:
    async def scenario() -> None:
        proxy = UdpProxy()
        async with scripted_proxy(proxy.handler) as port:
            assoc = await Socks5Outbound(_url(port)).open_udp(Inbox())
            assoc.close()
            assert assoc.closed.done()
            await asyncio.wait_for(proxy.control_eof.wait(), EVENT_TIMEOUT)
            proxy.close()

    run(scenario())


def test_udp_relay_port_zero_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _no_auth(reader, writer)
        await reader.readexactly(10)
        writer.write(H("05 00 00 01 7f000001 0000"))
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            with pytest.raises(ProxyProtocolError, match="UDP relay port 0"):
                await Socks5Outbound(_url(port)).open_udp(Inbox())

    run(scenario())


# -- direct and reject --------------------------------------------------------------------------


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


def test_direct_tcp() -> None:
    async def scenario() -> None:
        async with scripted_proxy(_tcp_echo) as port:
            stream = await DirectOutbound().open_tcp(Target(LOOPBACK, port))
            with stream.sock:
                assert stream.early == b""
                assert stream.sock.getblocking() is False
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(stream.sock, b"ping")
                assert await loop.sock_recv(stream.sock, 16) == b"ping"

    run(scenario())


def test_direct_tcp_refused_carries_socks_reply_code() -> None:
    with socket.socket() as placeholder:
        placeholder.bind((LOOPBACK, 0))
        target = Target(LOOPBACK, placeholder.getsockname()[1])
        with pytest.raises(TargetUnreachable) as info:
            run(DirectOutbound(connect_timeout=2).open_tcp(target))
    assert info.value.reply_code == 5
    assert info.value.reason == "connection refused"


def test_direct_udp_round_trip_and_close() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind((LOOPBACK, 0))
            server.setblocking(False)
            inbox = Inbox()
            assoc = await DirectOutbound().open_udp(inbox)
            target = Target(LOOPBACK, server.getsockname()[1])
            assoc.send(target, b"ping")
            data, client = await asyncio.wait_for(loop.sock_recvfrom(server, 100), EVENT_TIMEOUT)
            server.sendto(data.upper(), client)
            assert await inbox.get() == (target, b"PING")
            assoc.close()
            assert assoc.closed.done()
            assoc.send(target, b"late")
            assert assoc.dropped == 1

    run(scenario())


def test_a_direct_udp_association_is_known_as_its_own_source_until_closed() -> None:
    """The engine's loop guard: a datagram from the association's port on an address of
    this host is ztun's own (the routes chose that source); the same port from another
    host's address (gateway mode) is not, and neither is the port once closed."""

    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind((LOOPBACK, 0))
            server.settimeout(EVENT_TIMEOUT)
            assoc = await DirectOutbound().open_udp(Inbox())
            # Its port is known before a datagram leaves (bound at open).
            ports = [port for network, _, port in OWN_SOURCES if network == "udp"]
            assert len(ports) == len(assoc._sockets)
            assoc.send(Target(LOOPBACK, server.getsockname()[1]), b"ping")
            port = server.recvfrom(100)[1][1]
            assert port in ports
            assert is_own_source("udp", LOOPBACK, port)
            assert not is_own_source("udp", TEST_NET, port)  # not an address of this host
            assert not is_own_source("tcp", LOOPBACK, port)
            assoc.close()
            assert not is_own_source("udp", LOOPBACK, port)
            assert not any(network == "udp" for network, _, _ in OWN_SOURCES)

    run(scenario())


def test_reject() -> None:
    with pytest.raises(Rejected, match=r"TCP to 192\.0\.2\.9:80 rejected"):
        run(RejectOutbound().open_tcp(Target(TEST_NET, 80)))
    with pytest.raises(Rejected, match="UDP rejected"):
        run(RejectOutbound().open_udp(Inbox()))


def test_all_outbounds_satisfy_the_protocol() -> None:
    outbounds: list[Outbound] = [Socks5Outbound(_url(1)), DirectOutbound(), RejectOutbound()]
    for outbound in outbounds:
        assert callable(outbound.open_tcp) and callable(outbound.open_udp)


# -- the callback-driven dial and pipelining ----------------------------------------------

GREETING = H("050100")
TEST_NET_80 = Target(TEST_NET, 80)
REQUEST = encode_request(Command.CONNECT, TEST_NET_80)
REPLY_OK = H("05 00 00 01 7f000001 0050")


def _open_fds() -> int:
    # Sockets other tests left to the garbage collector would otherwise be closed by a
    # collection that happens to run between two counts.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def _apart(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readexactly(3) == GREETING
    writer.write(H("0500"))
    assert await reader.readexactly(len(REQUEST)) == REQUEST
    writer.write(REPLY_OK)


def test_after_one_handshake_apart_connects_are_pipelined() -> None:
    """Connection 1 is sent apart; from 2 on the proxy reads greeting and request before
    it answers anything - a client that waited for the method reply would deadlock."""
    connections: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not connections:
            connections.append("apart")
            await _apart(reader, writer)
        else:
            connections.append("pipelined")
            assert await reader.readexactly(3 + len(REQUEST)) == GREETING + REQUEST
            writer.write(H("0500") + REPLY_OK + b"banner")
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=3)
            states = []
            for _ in range(3):
                stream = await outbound.open_tcp(TEST_NET_80)
                stream.sock.close()
                states.append(outbound.pipelining.state)
            assert states == [PipelineState.TRIAL, PipelineState.ON, PipelineState.ON]
            assert stream.early == b"banner"

    run(scenario())
    assert connections == ["apart", "pipelined", "pipelined"]


def test_proxy_dropping_the_early_request_falls_back_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """microsocks' way: one recv() for the greeting, the rest dropped, then it waits."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(512)
        seen.append(first)
        writer.write(H("0500"))
        assert await reader.readexactly(len(REQUEST)) == REQUEST
        writer.write(REPLY_OK)
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=3)
            for _ in range(3):
                stream = await outbound.open_tcp(TEST_NET_80)
                stream.sock.close()
            assert outbound.pipelining.state is PipelineState.OFF

    run(scenario())
    # apart, the trial (dropped), its retry apart, then apart for good
    assert seen == [GREETING, GREETING + REQUEST, GREETING, GREETING]


def test_a_reply_code_to_a_pipelined_request_keeps_pipelining() -> None:
    count = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        if count == 1:
            await _apart(reader, writer)
        else:
            await reader.readexactly(3 + len(REQUEST))
            writer.write(H("0500 0505 0001 00000000 0000"))  # connection refused
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=3)
            (await outbound.open_tcp(TEST_NET_80)).sock.close()
            for _ in range(2):
                with pytest.raises(ProxyRefused, match="connection refused"):
                    await outbound.open_tcp(TEST_NET_80)
            assert outbound.pipelining.state is PipelineState.ON

    run(scenario())
    assert count == 3


def test_credentials_are_never_pipelined() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(4))
        writer.write(H("0502"))
        await reader.readexactly(2 + 1 + 1 + 1)
        writer.write(H("0100"))
        await reader.readexactly(len(REQUEST))
        writer.write(REPLY_OK)
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port, "u:p@"), connect_timeout=3)
            for _ in range(3):
                (await outbound.open_tcp(TEST_NET_80)).sock.close()
            assert outbound.pipelining.state is PipelineState.OFF

    run(scenario())
    assert seen == [H("05020002")] * 3


def test_cancelled_mid_handshake_closes_the_socket() -> None:
    """The engine cancels open_tcp when the flow's deadline passes or it is closed."""
    entered = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        entered.set()
        await reader.read()  # never answers

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=5)
            before = _open_fds()
            task = asyncio.create_task(outbound.open_tcp(TEST_NET_80))
            await entered.wait()
            assert _open_fds() == before + 2  # ours and the proxy's accepted one
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _open_fds() <= before + 1  # ours is closed (the server's may linger)

    run(scenario())


@contextlib.contextmanager
def _backlog_0_listener() -> Iterator[tuple[socket.socket, int]]:
    """A non-blocking listener on 127.0.0.1 with a backlog of 0: one connection not yet
    accepted fills its queue, and the kernel drops the next SYN (tcp_conn_request:
    sk_acceptq_is_full) until that one is accepted. Yields it and its port."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        listener.setblocking(False)
        yield listener, listener.getsockname()[1]


def test_first_message_waits_for_a_connect_that_completes_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The greeting is written right behind connect() when the handshake is already done;
    when it is not, the write gets EAGAIN and the dial waits for writability. Here the
    proxy's accept queue is full (listen backlog 0 and one connection not accepted), so the
    kernel drops our SYN (tcp_conn_request: sk_acceptq_is_full) and connects on its
    retransmission, after the filler was accepted (~1 s: the initial SYN RTO)."""
    waited: list[bool] = []
    original = handshake.Dial._on_connect_writable

    def spy(self: handshake.Dial[Any]) -> None:
        waited.append(True)
        original(self)

    monkeypatch.setattr(handshake.Dial, "_on_connect_writable", spy)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        with _backlog_0_listener() as (listener, port), socket.socket() as filler:
            filler.connect((LOOPBACK, port))  # the one entry a backlog of 0 allows
            task = asyncio.create_task(
                Socks5Outbound(_url(port), connect_timeout=5).open_tcp(TEST_NET_80)
            )
            await asyncio.sleep(0)  # noqa: sleep-ok (one loop pass: the task's connect() ran)
            assert not task.done()
            first, _ = await loop.sock_accept(listener)  # the filler: room for the retry
            first.close()
            conn, _ = await loop.sock_accept(listener)
            with conn:
                assert await loop.sock_recv(conn, 16) == GREETING
                await loop.sock_sendall(conn, H("0500"))
                request = await loop.sock_recv(conn, 64)
                await loop.sock_sendall(conn, REPLY_OK)
                (await task).sock.close()
            return request

    assert run(scenario()) == REQUEST
    assert waited == [True]


def test_a_trial_whose_syn_is_lost_still_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a trial's answers are bounded tightly, not its TCP connect: a lost SYN is
    retransmitted after the initial RTO (~1 s), and the flow must not fail then as
    "connect timed out" (CI saw that over a lossy link). The SYN is lost as in the test
    above: a full accept queue (listen backlog 0, one connection not yet accepted)."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)

    async def serve_apart(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            assert await loop.sock_recv(conn, 16) == GREETING
            await loop.sock_sendall(conn, H("0500"))
            assert await loop.sock_recv(conn, 64) == REQUEST
            await loop.sock_sendall(conn, REPLY_OK)

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        with _backlog_0_listener() as (listener, port), socket.socket() as filler:
            outbound = Socks5Outbound(_url(port), connect_timeout=5)
            apart = asyncio.create_task(outbound.open_tcp(TEST_NET_80))
            await serve_apart(loop, listener)
            (await apart).sock.close()
            assert outbound.pipelining.state is PipelineState.TRIAL
            filler.connect((LOOPBACK, port))  # the accept queue is full again
            trial = asyncio.create_task(outbound.open_tcp(TEST_NET_80))
            await asyncio.sleep(0)  # noqa: sleep-ok (one loop pass: the trial's SYN was lost)
            assert not trial.done()
            first, _ = await loop.sock_accept(listener)  # the filler: room for the retry
            first.close()
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            await asyncio.wait({accept, trial}, return_when=asyncio.FIRST_COMPLETED)
            if not accept.done():
                accept.cancel()
                (await trial).sock.close()  # it gave up before its SYN came again: raises
            conn, _ = accept.result()
            with conn:
                early = b""
                while len(early) < len(GREETING + REQUEST):
                    early += await loop.sock_recv(conn, 64)
                await loop.sock_sendall(conn, H("0500") + REPLY_OK)
                (await trial).sock.close()
            assert outbound.pipelining.state is PipelineState.ON
            return early

    assert run(scenario()) == GREETING + REQUEST


def test_a_trial_the_proxy_never_answers_is_redone_apart_in_its_own_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that reads the pipelined greeting and request and answers nothing: the
    trial's bound (not the 30 s connect timeout) ends it, and the flow is carried apart."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(seen) == 1:
            seen.append(await reader.readexactly(3 + len(REQUEST)))
            await reader.read()  # the trial: silence
            return
        seen.append(GREETING)
        await _apart(reader, writer)
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=30)
            for _ in range(2):
                async with asyncio.timeout(5):
                    (await outbound.open_tcp(TEST_NET_80)).sock.close()
            assert outbound.pipelining.state is PipelineState.OFF

    with caplog.at_level("INFO", logger=socks5_module.__name__):
        run(scenario())
    assert seen == [GREETING, GREETING + REQUEST, GREETING]
    off = [r.getMessage() for r in caplog.records if "apart from now on" in r.getMessage()]
    assert len(off) == 1 and "no SOCKS5 answer within 0.3s" in off[0]


def test_a_trial_to_a_slow_target_keeps_pipelining_on_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trial's reply does not come within its bound because the target is slow, not
    because the request was dropped: the redo apart is as slow to reply, so pipelining is
    not turned off, and the next trial (a prompt target) turns it on."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)
    slow_target, slow_delay = Target("192.0.2.10", 80), 0.5
    slow_request = encode_request(Command.CONNECT, slow_target)
    ways = iter(["apart", "pipelined", "apart", "pipelined"])  # the client's, in order
    seen: list[bytes] = []

    async def reply(writer: asyncio.StreamWriter, request: bytes) -> None:
        if request == slow_request:
            await asyncio.sleep(slow_delay)  # noqa: sleep-ok (the slow target is the case)
        writer.write(REPLY_OK)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        way = next(ways)
        assert await reader.readexactly(3) == GREETING
        if way == "apart":
            writer.write(H("0500"))
        # Pipelined: the request is read before anything is answered (a client that sent
        # it apart would wait for the method selection: the test would time out).
        request = await reader.readexactly(len(REQUEST))
        seen.append(f"{way} ".encode() + request)
        if way == "pipelined":
            writer.write(H("0500"))
        await reply(writer, request)
        await reader.read()

    async def scenario() -> list[PipelineState]:
        states = []
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=5)
            for target in (TEST_NET_80, slow_target, TEST_NET_80):
                (await outbound.open_tcp(target)).sock.close()
                states.append(outbound.pipelining.state)
        return states

    states = run(scenario())
    assert states == [PipelineState.TRIAL, PipelineState.TRIAL, PipelineState.ON]
    assert seen == [
        b"apart " + REQUEST,
        b"pipelined " + slow_request,  # no reply within 0.3 s: carried apart
        b"apart " + slow_request,  # as slow: the target's fault
        b"pipelined " + REQUEST,
    ]


def _slow_greeter(greeting_delay: float, target_delay: float, seen: list[bytes]) -> Handler:
    """A proxy behind a forwarder (ssh -L, a TCP balancer): the connect is answered at
    once, the greeting only `greeting_delay` later (the forwarder's own connect); the
    reply `target_delay` after the request (the target's connect). Pipelining it handles."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(3))
        await asyncio.sleep(greeting_delay)  # noqa: sleep-ok (the slow forwarder is the case)
        writer.write(H("0500"))
        assert await reader.readexactly(len(REQUEST)) == REQUEST
        await asyncio.sleep(target_delay)  # noqa: sleep-ok
        writer.write(REPLY_OK)
        await reader.read()

    return handler


def _states_per_connect(handler: Handler, connects: int = 2) -> list[PipelineState]:
    """Connect `connects` times through a scripted proxy; the pipelining state after each."""

    async def scenario() -> list[PipelineState]:
        states = []
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=5)
            for _ in range(connects):
                (await outbound.open_tcp(TEST_NET_80)).sock.close()
                states.append(outbound.pipelining.state)
        return states

    return run(scenario())


def test_a_trial_gets_its_reply_in_its_own_time_after_a_slow_greeting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The method selection takes 0.3 s (a forwarder), the reply 0.3 s more: each answer
    within the trial's 0.5 s, so the trial is answered and pipelining turns on. (Bounded
    as a whole from the connect, the trial timed out at 0.5 s; the redo's reply, timed
    from its method selection, came in 0.3 s and pipelining was turned off for good.)"""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.5)
    seen: list[bytes] = []
    with caplog.at_level("INFO", logger=socks5_module.__name__):
        states = _states_per_connect(_slow_greeter(0.3, 0.3, seen))
    assert not [r for r in caplog.records if "apart from now on" in r.getMessage()]
    assert states == [PipelineState.TRIAL, PipelineState.ON]
    assert len(seen) == 2  # no redo


def test_a_trial_without_a_method_selection_is_judged_by_the_redos(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The greeting's answer takes 0.5 s, longer than the trial's 0.3 s: the trial ends
    with no answer at all, and its redo's greeting is as slow. The proxy is slow, not
    dropping requests: pipelining stays on trial. (Timing the redo's reply instead, which
    came at once, blamed pipelining and turned it off for good.)"""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)
    seen: list[bytes] = []
    with caplog.at_level("INFO", logger=socks5_module.__name__):
        states = _states_per_connect(_slow_greeter(0.5, 0.0, seen))
    assert not [r for r in caplog.records if "apart from now on" in r.getMessage()]
    assert states == [PipelineState.TRIAL, PipelineState.TRIAL]
    assert len(seen) == 3  # apart, the trial, its redo


def test_a_trial_that_cannot_start_leaves_the_next_one_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug raised while a trial's dial starts fails that flow (start_tcp raises: the
    engine fails the set-up); it must not leave a trial running forever, which would
    keep every later handshake apart."""

    async def scenario() -> list[PipelineState]:
        states = []
        async with scripted_proxy(_apart) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=5)
            (await outbound.open_tcp(TEST_NET_80)).sock.close()
            with monkeypatch.context() as patch:
                patch.setattr(
                    outbound._dialer, "start_handshake", Mock(side_effect=RuntimeError("bug"))
                )
                with pytest.raises(RuntimeError):
                    await outbound.open_tcp(TEST_NET_80)
            for _ in range(2):
                (await outbound.open_tcp(TEST_NET_80)).sock.close()
                states.append(outbound.pipelining.state)
        return states

    assert run(scenario()) == [PipelineState.ON, PipelineState.ON]


class ChangingProxy:
    """Answers pipelined requests until `drop_early` is set, then turns microsocks-like
    (one recv() for the greeting, the rest dropped): another server behind the address."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.drop_early = False

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.seen:
            self.seen.append(GREETING)
            await _apart(reader, writer)
        elif not self.drop_early:
            self.seen.append(await reader.readexactly(3 + len(REQUEST)))
            writer.write(H("0500") + REPLY_OK)
        else:
            first = await reader.read(512)
            self.seen.append(first)
            writer.write(H("0500"))
            try:
                assert await reader.readexactly(len(REQUEST)) == REQUEST
            except asyncio.IncompleteReadError:
                return  # its request was the dropped one: the client gave up on it
            writer.write(REPLY_OK)
        await reader.read()

    async def turned_on(self, outbound: Socks5Outbound) -> None:
        for _ in range(2):  # apart, then the trial, answered
            (await outbound.open_tcp(TEST_NET_80)).sock.close()
        assert outbound.pipelining.state is PipelineState.ON
        self.drop_early = True


def test_once_on_a_dropped_request_is_redone_apart_and_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Pipelining on, then the proxy drops early requests: the handshake's usual bound
    (here 1.5 s) ends the wait for the reply, that flow is carried apart, its prompt reply
    blames the proxy, and the next flow is sent apart too."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.3)
    proxy = ChangingProxy()

    async def scenario() -> None:
        async with scripted_proxy(proxy.handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=1.5)
            await proxy.turned_on(outbound)
            for _ in range(2):
                (await outbound.open_tcp(TEST_NET_80)).sock.close()
            assert outbound.pipelining.state is PipelineState.OFF

    with caplog.at_level("INFO", logger=socks5_module.__name__):
        run(scenario())
    # apart, the trial (answered: on); then dropped, its retry apart, the next flow apart
    assert proxy.seen == [GREETING, GREETING + REQUEST, GREETING + REQUEST, GREETING, GREETING]
    off = [r.getMessage() for r in caplog.records if "apart from now on" in r.getMessage()]
    assert len(off) == 1
    assert "no SOCKS5 answer within 1.5s" in off[0]


def test_once_on_a_flow_limit_after_the_method_selection_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flow's own limit (the engine's asyncio.timeout) ends first: that flow fails
    once, as it would anyway, and the next is sent apart and succeeds."""
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 30.0)
    proxy = ChangingProxy()

    async def scenario() -> None:
        async with scripted_proxy(proxy.handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=30)
            await proxy.turned_on(outbound)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await outbound.open_tcp(TEST_NET_80)
            assert outbound.pipelining.state is PipelineState.OFF
            (await outbound.open_tcp(TEST_NET_80)).sock.close()
            assert outbound.pipelining.state is PipelineState.OFF

    run(scenario())
    assert proxy.seen[2:] == [GREETING + REQUEST, GREETING]


def test_once_on_a_flow_limit_before_the_method_selection_keeps_it_on() -> None:
    """A proxy that answers nothing in time says nothing about pipelining."""
    stalled = asyncio.Event()
    proxy = ChangingProxy()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if proxy.drop_early:
            await reader.readexactly(3 + len(REQUEST))
            stalled.set()
            await reader.read()  # never answers
        else:
            await proxy.handler(reader, writer)

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(_url(port), connect_timeout=30)
            await proxy.turned_on(outbound)
            task = asyncio.create_task(outbound.open_tcp(TEST_NET_80))
            await stalled.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert outbound.pipelining.state is PipelineState.ON

    run(scenario())
