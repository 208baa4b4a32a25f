"""--icmp local|direct|reject in namespaces: real pings, real kernels (issue 16, item 3).

`direct` sends the app's echo from ztun's own host, so for these tests (only) the proxy
namespace forwards, the server has a route back, and ztun's marked sockets take a policy
route around the TUN (`--fwmark`, as --auto-route sets up). ICMP sockets need the group of
ztun (root) in the client namespace's `net.ipv4.ping_group_range` (per namespace; the
kernel's default "1 0" allows nobody): the harness opens it in every namespace it makes.

An address that never answers: BLACKHOLE4/6, routed by the proxy to the server, where a
blackhole route drops it silently.
"""

from __future__ import annotations

import pytest
from ztun_path import Path, StartPath

from harness.topo import Topology
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

MARK, TABLE = "42", "42"
BLACKHOLE4, BLACKHOLE6 = "10.202.99.1", "fd00:202:99::1"
SYSCTL_TIMEOUT = 10.0
PING_TIMEOUT = 30.0


def _run(host, *argv: str) -> None:  # type: ignore[no-untyped-def]
    host.run(list(argv), check=True, timeout=SYSCTL_TIMEOUT)


def route_around_the_tun(topo: Topology) -> None:
    """What ztun's own ICMP sockets need to reach the server without the TUN."""
    client, proxy, server = topo.client, topo.proxy, topo.server
    for family in (4, 6):
        v = f"-{family}"
        end = topo.endpoint("client", "proxy")
        client_net = str((end.ipv4 if family == 4 else end.ipv6).network)  # type: ignore[union-attr]
        to_proxy = str(topo.address("proxy", "client", family))
        to_server = str(topo.address("server", "proxy", family))
        back_to_client = str(topo.address("proxy", "server", family))
        hole = BLACKHOLE4 if family == 4 else BLACKHOLE6
        _run(client, tool("ip"), v, "rule", "add", "fwmark", MARK, "lookup", TABLE)
        _run(client, tool("ip"), v, "route", "add", "default", "via", to_proxy, "table", TABLE)
        _run(server, tool("ip"), v, "route", "add", client_net, "via", back_to_client)
        _run(proxy, tool("ip"), v, "route", "add", hole, "via", to_server)
        _run(server, tool("ip"), v, "route", "add", "blackhole", hole)
    _run(
        proxy, tool("sysctl"), "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"
    )


def ping(path: Path, target: str, *, count: int = 3, size: int = 56):  # type: ignore[no-untyped-def]
    flags = ["-c", str(count), "-i", "0.2", "-W", "1", "-s", str(size), "-M", "dont"]
    return path.topo.client.run([tool("ping"), *flags, target], timeout=PING_TIMEOUT)


def echoes_answered(topo: Topology, family: int) -> int:
    """The server kernel's own count of echo requests it answered (per namespace)."""
    if family == 4:
        lines = topo.server.run([tool("cat"), "/proc/net/snmp"], timeout=SYSCTL_TIMEOUT).stdout
        names, values = (ln.split() for ln in lines.splitlines() if ln.startswith("Icmp:"))
        return int(dict(zip(names, values, strict=True))["OutEchoReps"])
    text = topo.server.run([tool("cat"), "/proc/net/snmp6"], timeout=SYSCTL_TIMEOUT).stdout
    return int(dict(ln.split() for ln in text.splitlines())["Icmp6OutEchoReplies"])


@pytest.fixture
def direct_path(servers: Topology, start_path: StartPath) -> Path:
    route_around_the_tun(servers)
    return start_path("danted", extra=("--icmp", "direct", "--fwmark", MARK))


@pytest.mark.parametrize("family", [4, 6])
def test_direct_ping_is_answered_by_the_real_host(direct_path: Path, family: int) -> None:
    target = direct_path.server_v4 if family == 4 else direct_path.server_v6
    before = echoes_answered(direct_path.topo, family)
    result = ping(direct_path, target, count=4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0% packet loss" in result.stdout
    # The server's kernel answered them: ztun did not make the replies up.
    assert echoes_answered(direct_path.topo, family) - before == 4


@pytest.mark.parametrize("family", [4, 6])
def test_direct_ping_to_an_address_that_never_answers_loses_everything(
    direct_path: Path, family: int
) -> None:
    result = ping(direct_path, BLACKHOLE4 if family == 4 else BLACKHOLE6)
    assert result.returncode != 0
    assert " 100% packet loss" in result.stdout, result.stdout


@pytest.mark.parametrize("family", [4, 6])
def test_direct_3000_byte_ping_goes_through_whole(direct_path: Path, family: int) -> None:
    """Fragmented by the app's kernel before the TUN, reassembled by ztun, sent through
    an ICMP socket (fragmented again by ztun's host), answered, fragmented into the TUN."""
    target = direct_path.server_v4 if family == 4 else direct_path.server_v6
    result = ping(direct_path, target, size=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0% packet loss" in result.stdout and "3008 bytes from" in result.stdout


def test_local_ping_answers_even_an_address_that_does_not_exist(start_path: StartPath) -> None:
    """The default (as sing-box and hev do): ztun answers, whatever is out there."""
    path = start_path("danted")
    result = ping(path, BLACKHOLE4)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("family", "says"), [(4, "Packet filtered"), (6, "Administratively prohibited")]
)
def test_reject_answers_administratively_prohibited(
    start_path: StartPath, family: int, says: str
) -> None:
    path = start_path("danted", extra=("--icmp", "reject"))
    result = ping(path, path.server_v4 if family == 4 else path.server_v6, count=1)
    assert result.returncode != 0
    assert says in result.stdout, result.stdout


def test_direct_without_ping_group_range_refuses_to_start(servers: Topology) -> None:
    """The kernel's default range allows no ICMP sockets: ztun says which sysctl to set."""
    from harness.hosts import LogLine
    from harness.impls import Ztun

    _run(servers.client, tool("sysctl"), "-q", "-w", "net.ipv4.ping_group_range=1 0")
    argv = [Ztun()._binary(servers.client), "run", "--device", "tun://zt9", "--icmp", "direct"]
    process = servers.client.spawn([*argv, "--proxy", "socks5://127.0.0.1:1"], name="ztun-icmp")
    process.wait_for(LogLine(r"net\.ipv4\.ping_group_range"), timeout=20)
    assert process.wait(20) == 1


def test_a_direct_echo_session_is_a_flow(direct_path: Path) -> None:
    """`ztun flows` lists the echo session (app address and identifier -> the target,
    outbound direct, payload bytes each way); `ztun close` ends it."""
    import json

    from harness.impls.ztun import default_binary

    result = ping(direct_path, direct_path.server_v4, count=4)
    assert result.returncode == 0, result.stdout + result.stderr

    def flows() -> list[dict]:  # type: ignore[type-arg]
        listed = direct_path.topo.client.run(
            [default_binary(), "flows", "--json", "--proto", "icmp"], timeout=PING_TIMEOUT
        )
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)  # type: ignore[no-any-return]

    (flow,) = flows()
    assert flow["dst"] == f"{direct_path.server_v4}:0" and flow["outbound"] == "direct"
    assert flow["src"].startswith("172.19.0.1:")  # ping's source: the TUN's address
    assert flow["bytes_up"] == flow["bytes_down"] == 4 * 56
    closed = direct_path.topo.client.run(
        [default_binary(), "close", str(flow["id"])], timeout=PING_TIMEOUT
    )
    assert closed.returncode == 0, closed.stderr
    assert flows() == []


def test_a_refused_socket_option_costs_that_echo_only(
    servers: Topology, start_path: StartPath
) -> None:
    """`--interface` names no interface: every ICMP socket's SO_BINDTODEVICE is
    refused (make_socket raises OutboundError). Each echo is counted as
    icmp_echo_socket_failed and lost, ztun keeps running, and nothing escapes as a
    traceback (which also lost the rest of the pump's batch)."""
    import json

    from harness.impls.ztun import default_binary

    path = start_path("danted", extra=("--icmp", "direct", "--interface", "nosuch0"))
    result = ping(path, path.server_v4, count=2)
    assert " 100% packet loss" in result.stdout, result.stdout
    status = servers.client.run([default_binary(), "status", "--json"], timeout=PING_TIMEOUT)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counters"]["icmp_echo_socket_failed"] == 2
    assert path.ztun.alive()
    log = path.ztun.log_text()
    assert "cannot open an ICMP socket: cannot set bind_interface 'nosuch0'" in log
    assert "Traceback" not in log
