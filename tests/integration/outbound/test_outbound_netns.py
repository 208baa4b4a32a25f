"""ztun.outbound against real SOCKS5 servers (microsocks, danted, sing-box's socks
inbound) in a private namespace.

Pipelining: danted and sing-box read a CONNECT sent together with the greeting;
microsocks reads the greeting with one recv() and drops the rest, so ztun must notice
and send them apart. Every transfer is checked byte for byte.

Everything - servers, echo targets, the client's sockets - lives on the loopback of a
namespace created for this module (see conftest.py); nothing reaches the root namespace.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from outbound_netns_env import (
    DANTED_PORT,
    DANTED_SPARE_PORT,
    DEAD_PORT,
    MICROSOCKS_AUTH_PORT,
    MICROSOCKS_PORT,
    PASSWORD,
    SING_BOX_PORT,
    USER,
    Daemon,
    EchoServers,
    NetnsLoop,
    start_danted,
)

from ztun.outbound import (
    DirectOutbound,
    ProxyAuthFailed,
    ProxyRefused,
    ProxyUnreachable,
    Socks5Outbound,
    TargetUnreachable,
    TcpStream,
)
from ztun.outbound import socks5 as socks5_module
from ztun.outbound.socks5_proto import PipelineState
from ztun.outbound.target import Target
from ztun.tools import tool

pytestmark = pytest.mark.netns

EVENT_TIMEOUT = 5.0
TEARDOWN_TIMEOUT = 10.0  # danted notices a closed control connection and frees the relay
PAYLOAD = random.Random(1928).randbytes(64 * 1024)  # > microsocks's 1 KiB relay buffer
UDP_COUNT = 20
BLACKHOLE_NET = "192.0.2.0/24"  # TEST-NET-1, routed to a veth inside the namespace
BLACKHOLE_HOST = "192.0.2.1"
BLACKHOLE_MAC = "02:00:00:00:00:01"  # nobody's
TARGET_HOSTS = ["127.0.0.1", "::1", "localhost"]
PROXY_HOSTS = ["127.0.0.1", "[::1]"]


def _url(port: int, host: str = "127.0.0.1", auth: str = "") -> str:
    return f"socks5://{auth}{host}:{port}"


async def _echo_through(stream: TcpStream, payload: bytes) -> bytes:
    """Send `payload` over the stream, read until as many bytes came back, close."""
    loop = asyncio.get_running_loop()
    with stream.sock:
        send = loop.create_task(loop.sock_sendall(stream.sock, payload))
        got = bytearray(stream.early)
        while len(got) < len(payload):
            chunk = await asyncio.wait_for(loop.sock_recv(stream.sock, 65536), EVENT_TIMEOUT)
            if not chunk:
                break
            got += chunk
        await send
    return bytes(got)


# -- CONNECT --------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["microsocks", "danted"])
@pytest.mark.parametrize("proxy_host", PROXY_HOSTS)
@pytest.mark.parametrize("target_host", TARGET_HOSTS)
def test_connect_echo(
    request: pytest.FixtureRequest,
    ns_loop: NetnsLoop,
    echo: EchoServers,
    server: str,
    proxy_host: str,
    target_host: str,
) -> None:
    request.getfixturevalue(server)
    port = MICROSOCKS_PORT if server == "microsocks" else DANTED_PORT
    outbound = Socks5Outbound(_url(port, proxy_host), connect_timeout=EVENT_TIMEOUT)

    async def scenario() -> bytes:
        stream = await outbound.open_tcp(Target(target_host, echo.port))
        assert stream.sock.getblocking() is False
        assert stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return await _echo_through(stream, PAYLOAD)

    assert ns_loop.run(scenario()) == PAYLOAD


def test_connect_with_auth(ns_loop: NetnsLoop, echo: EchoServers, microsocks_auth: Daemon) -> None:
    auth = "ztun:p%40ss%3Aw%2Frd@"  # USER:PASSWORD, percent-encoded
    assert (USER, PASSWORD) == ("ztun", "p@ss:w/rd")
    outbound = Socks5Outbound(_url(MICROSOCKS_AUTH_PORT, auth=auth))

    async def scenario() -> bytes:
        stream = await outbound.open_tcp(Target("127.0.0.1", echo.port))
        return await _echo_through(stream, b"authenticated")

    assert ns_loop.run(scenario()) == b"authenticated"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("ztun:wrong@", "rejected username 'ztun'"),
        ("", "accepts none of the offered methods"),
    ],
    ids=["wrong-password", "no-credentials"],
)
def test_auth_failures(
    ns_loop: NetnsLoop, echo: EchoServers, microsocks_auth: Daemon, auth: str, message: str
) -> None:
    outbound = Socks5Outbound(_url(MICROSOCKS_AUTH_PORT, auth=auth))
    with pytest.raises(ProxyAuthFailed, match=message) as info:
        ns_loop.run(outbound.open_tcp(Target("127.0.0.1", echo.port)))
    assert f"127.0.0.1:{MICROSOCKS_AUTH_PORT}" in str(info.value)
    assert "wrong" not in str(info.value)


@pytest.mark.parametrize("server", ["microsocks", "danted"])
def test_target_refused_is_proxy_refused(
    request: pytest.FixtureRequest, ns_loop: NetnsLoop, server: str
) -> None:
    request.getfixturevalue(server)
    port = MICROSOCKS_PORT if server == "microsocks" else DANTED_PORT
    with pytest.raises(ProxyRefused) as info:
        ns_loop.run(Socks5Outbound(_url(port)).open_tcp(Target("127.0.0.1", DEAD_PORT)))
    assert info.value.reply_code == 5
    assert info.value.reason == "connection refused"


def test_proxy_down_is_unreachable(ns_loop: NetnsLoop) -> None:
    outbound = Socks5Outbound(_url(DEAD_PORT))
    with pytest.raises(ProxyUnreachable, match=f"proxy 127.0.0.1:{DEAD_PORT}: Connection refused"):
        ns_loop.run(outbound.open_tcp(Target("127.0.0.1", 1)))


def test_proxy_without_route_is_unreachable(ns_loop: NetnsLoop) -> None:
    outbound = Socks5Outbound(_url(1080, "198.51.100.1"))  # the namespace has no such route
    with pytest.raises(ProxyUnreachable, match="Network is unreachable"):
        ns_loop.run(outbound.open_tcp(Target("127.0.0.1", 1)))


def test_proxy_name_that_does_not_resolve_is_unreachable(ns_loop: NetnsLoop) -> None:
    # Resolution runs in the namespace, which has only loopback: no query leaves it.
    outbound = Socks5Outbound("socks5h://proxy.invalid:1080", connect_timeout=EVENT_TIMEOUT)
    with pytest.raises(ProxyUnreachable, match=r"proxy proxy\.invalid:1080: cannot resolve host"):
        ns_loop.run(outbound.open_tcp(Target("127.0.0.1", 1)))


@pytest.fixture
def blackhole(netns: str) -> Iterator[str]:
    """An address whose SYNs vanish: routed out a veth whose peer drops them (foreign MAC).

    So connect() hangs until our timeout, as with a firewalled proxy.
    """
    for args in (
        ["link", "add", "ztblack0", "type", "veth", "peer", "name", "ztblack1"],
        ["link", "set", "ztblack0", "up"],
        ["link", "set", "ztblack1", "up"],
        ["route", "add", BLACKHOLE_NET, "dev", "ztblack0"],
        [
            "neigh",
            "add",
            BLACKHOLE_HOST,
            "lladdr",
            BLACKHOLE_MAC,
            "nud",
            "permanent",
            "dev",
            "ztblack0",
        ],
    ):
        subprocess.run([tool("ip"), "-n", netns, *args], check=True, timeout=10)
    yield BLACKHOLE_HOST
    subprocess.run([tool("ip"), "-n", netns, "link", "del", "ztblack0"], check=True, timeout=10)


def test_proxy_connect_timeout(ns_loop: NetnsLoop, blackhole: str) -> None:
    outbound = Socks5Outbound(_url(1080, blackhole), connect_timeout=0.3)
    with pytest.raises(ProxyUnreachable, match=r"connect timed out after 0\.3s"):
        ns_loop.run(outbound.open_tcp(Target("127.0.0.1", 1)))


def test_fwmark_and_bind_interface(
    ns_loop: NetnsLoop, echo: EchoServers, microsocks: Daemon
) -> None:
    outbound = Socks5Outbound(_url(MICROSOCKS_PORT), fwmark=0x2A, bind_interface="lo")

    async def scenario() -> tuple[int, bytes, bytes]:
        stream = await outbound.open_tcp(Target("127.0.0.1", echo.port))
        mark = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK)
        device = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        return mark, device.rstrip(b"\0"), await _echo_through(stream, b"marked")

    assert ns_loop.run(scenario()) == (0x2A, b"lo", b"marked")


# -- UDP ASSOCIATE (danted) -------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Target, bytes]] = asyncio.Queue()

    def __call__(self, source: Target, payload: bytes) -> None:
        self.queue.put_nowait((source, payload))

    async def get(self) -> tuple[Target, bytes]:
        return await asyncio.wait_for(self.queue.get(), EVENT_TIMEOUT)


@pytest.mark.parametrize("proxy_host", PROXY_HOSTS)
def test_udp_associate_round_trip(
    ns_loop: NetnsLoop, echo: EchoServers, danted: Daemon, proxy_host: str
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        assoc = await Socks5Outbound(_url(DANTED_PORT, proxy_host)).open_udp(inbox)
        try:
            for host, replier in [
                ("127.0.0.1", "127.0.0.1"),
                ("::1", "::1"),
                ("localhost", None),  # danted resolves it; the reply names an address
            ]:
                for i in range(UDP_COUNT):
                    assoc.send(Target(host, echo.port), f"{host} #{i}".encode())
                for i in range(UDP_COUNT):
                    source, payload = await inbox.get()
                    assert payload == f"{host} #{i}".encode()
                    assert source.port == echo.port and not source.is_domain
                    if replier is not None:
                        assert source.host == replier
            assert assoc.dropped == 0
        finally:
            assoc.close()

    ns_loop.run(scenario())


def _udp_ports(pid: int) -> set[int]:
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


async def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Re-check a kernel table until `predicate()` holds (a socket going away has no event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)  # noqa: sleep-ok - kernel socket tables have no change event
    return True


def test_closing_association_closes_control_and_danted_frees_relay(
    ns_loop: NetnsLoop, echo: EchoServers, danted: Daemon
) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        assoc = await Socks5Outbound(_url(DANTED_PORT)).open_udp(inbox)
        relay_port = assoc.relay.port
        assoc.send(Target("127.0.0.1", echo.port), b"warm-up")
        await inbox.get()
        assert relay_port in _udp_ports(danted.proc.pid)
        assoc.close()
        assert assoc.closed.done()
        freed = await _until(
            lambda: relay_port not in _udp_ports(danted.proc.pid), TEARDOWN_TIMEOUT
        )
        assert freed, f"danted kept relay port {relay_port} after the control connection closed"
        assoc.send(Target("127.0.0.1", echo.port), b"after close")
        assert assoc.dropped == 1

    ns_loop.run(scenario())


def test_server_closing_control_ends_association(
    netns: str, ns_loop: NetnsLoop, echo: EchoServers, log_dir: Path
) -> None:
    spare = start_danted(netns, "danted-spare", DANTED_SPARE_PORT, log_dir)
    try:
        inbox = Inbox()
        assoc = ns_loop.run(Socks5Outbound(_url(DANTED_SPARE_PORT)).open_udp(inbox))

        async def warm_up() -> None:
            assoc.send(Target("127.0.0.1", echo.port), b"warm-up")
            await inbox.get()

        ns_loop.run(warm_up())
        assert not assoc.closed.done()
        spare.stop()  # danted exits: its end of the control connection closes

        async def wait_closed() -> None:
            await asyncio.wait_for(asyncio.shield(assoc.closed), EVENT_TIMEOUT)

        ns_loop.run(wait_closed())
    finally:
        spare.stop()


# -- direct -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target_host", TARGET_HOSTS)
def test_direct_tcp(ns_loop: NetnsLoop, echo: EchoServers, target_host: str) -> None:
    async def scenario() -> bytes:
        stream = await DirectOutbound(fwmark=7).open_tcp(Target(target_host, echo.port))
        return await _echo_through(stream, PAYLOAD)

    assert ns_loop.run(scenario()) == PAYLOAD


def test_direct_tcp_refused(ns_loop: NetnsLoop) -> None:
    with pytest.raises(TargetUnreachable) as info:
        ns_loop.run(DirectOutbound().open_tcp(Target("::1", DEAD_PORT)))
    assert info.value.reply_code == 5


def test_direct_udp(ns_loop: NetnsLoop, echo: EchoServers) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        assoc = await DirectOutbound().open_udp(inbox)
        try:
            for host in ("127.0.0.1", "::1"):
                assoc.send(Target(host, echo.port), host.encode())
                assert await inbox.get() == (Target(host, echo.port), host.encode())
            assoc.send(Target("localhost", echo.port), b"by name")
            source, payload = await inbox.get()
            assert payload == b"by name" and source.ip is not None and source.ip.is_loopback
        finally:
            assoc.close()

    ns_loop.run(scenario())


# -- pipelining ----------------------------------------------------------------------------


CONNECTIONS = 4


async def _echo_many(outbound: Socks5Outbound, target: Target) -> list[PipelineState]:
    """CONNECTIONS echoes one after the other; the policy's state after each."""
    states = []
    for _ in range(CONNECTIONS):
        stream: TcpStream = await outbound.open_tcp(target)
        assert await _echo_through(stream, PAYLOAD) == PAYLOAD
        states.append(outbound.pipelining.state)
    return states


@pytest.mark.parametrize(("server", "port"), [("danted", DANTED_PORT), ("sing_box", SING_BOX_PORT)])
def test_servers_that_read_a_pipelined_connect(
    request: pytest.FixtureRequest,
    ns_loop: NetnsLoop,
    echo: EchoServers,
    server: str,
    port: int,
) -> None:
    request.getfixturevalue(server)
    outbound = Socks5Outbound(_url(port), connect_timeout=EVENT_TIMEOUT)
    states = ns_loop.run(_echo_many(outbound, Target("127.0.0.1", echo.port)))
    # 1: apart (nothing known yet); 2: the trial, answered; 3, 4: pipelined
    assert states == [PipelineState.TRIAL, PipelineState.ON, PipelineState.ON, PipelineState.ON]


@pytest.mark.parametrize(("server", "port"), [("danted", DANTED_PORT), ("sing_box", SING_BOX_PORT)])
def test_refusal_of_a_pipelined_connect_is_its_reply_code(
    request: pytest.FixtureRequest, ns_loop: NetnsLoop, echo: EchoServers, server: str, port: int
) -> None:
    request.getfixturevalue(server)
    outbound = Socks5Outbound(_url(port), connect_timeout=EVENT_TIMEOUT)

    async def scenario() -> ProxyRefused:
        for _ in range(2):  # apart, then the trial: pipelining is on after these
            stream = await outbound.open_tcp(Target("127.0.0.1", echo.port))
            assert await _echo_through(stream, b"warm-up") == b"warm-up"
        assert outbound.pipelining.state is PipelineState.ON
        with pytest.raises(ProxyRefused) as info:
            await outbound.open_tcp(Target("127.0.0.1", DEAD_PORT))
        return info.value

    refused = ns_loop.run(scenario())
    # sing-box answers every failed dial with a general failure; danted says what it was.
    assert refused.reply_code in ((0x05,) if server == "danted" else (0x01, 0x05))
    assert outbound.pipelining.state is PipelineState.ON


def test_microsocks_drops_a_pipelined_connect_and_is_sent_apart(
    ns_loop: NetnsLoop, echo: EchoServers, microsocks: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socks5_module, "PIPELINE_TRIAL_TIMEOUT", 0.5)
    outbound = Socks5Outbound(_url(MICROSOCKS_PORT), connect_timeout=EVENT_TIMEOUT)
    states = ns_loop.run(_echo_many(outbound, Target("127.0.0.1", echo.port)))
    # 2 is the trial: it stalls, and the same flow is carried apart on a new connection
    assert states == [PipelineState.TRIAL] + [PipelineState.OFF] * (CONNECTIONS - 1)


def test_a_proxy_with_credentials_is_never_pipelined(
    ns_loop: NetnsLoop, echo: EchoServers, microsocks_auth: Daemon
) -> None:
    outbound = Socks5Outbound(
        _url(MICROSOCKS_AUTH_PORT, auth="ztun:p%40ss%3Aw%2Frd@"), connect_timeout=EVENT_TIMEOUT
    )
    states = ns_loop.run(_echo_many(outbound, Target("127.0.0.1", echo.port)))
    assert states == [PipelineState.OFF] * CONNECTIONS
