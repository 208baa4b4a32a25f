"""Topologies: reachability as the contract says, offloads off, teardown, captures, faults."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from harness.artifacts import TestArtifacts
from harness.capture import capture
from harness.faults import Faults, netem_support
from harness.topo import HostSpec, LinkSpec, Topology, TopologySpec
from ztun.tools import tool

pytestmark = pytest.mark.netns

PING = [tool("ping"), "-c", "1", "-W", "2"]


@pytest.mark.parametrize("family", [4, 6])
def test_client_reaches_proxy_and_proxy_reaches_server(topology: Topology, family: int) -> None:
    proxy = topology.address("proxy", "client", family)
    server = topology.address("server", "proxy", family)
    topology.client.run([*PING, str(proxy)], check=True)
    topology.proxy.run([*PING, str(server)], check=True)


@pytest.mark.parametrize("family", [4, 6])
def test_client_cannot_reach_server_directly(topology: Topology, family: int) -> None:
    server = topology.address("server", "proxy", family)
    assert not topology.client.run([*PING, str(server)]).ok
    # Even with a route via the proxy: the proxy does not forward.
    via = topology.address("proxy", "client", family)
    topology.client.add_route("::/0" if family == 6 else "default", via=str(via))
    assert not topology.client.run([*PING, str(server)]).ok
    assert topology.proxy.sysctl("net.ipv4.ip_forward") == "0"


def test_addresses_and_names(topology: Topology) -> None:
    link = topology.link("client", "proxy")
    assert link.a.ipv4 == ipaddress.IPv4Interface("10.200.1.1/24")
    assert link.b.ipv6 == ipaddress.IPv6Interface("fd00:200:1::2/64")
    assert topology.endpoint("proxy", "server").ipv4 == ipaddress.IPv4Interface("10.201.1.1/24")
    assert link.peer("client") is link.b
    assert topology["server"] is topology.server is topology.host("server")
    assert sorted(topology.hosts) == ["client", "proxy", "server"]
    client_addrs = topology.client.addresses(topology.iface("client", "proxy"))
    assert ipaddress.ip_interface("fd00:200:1::1/64") in client_addrs
    for end in (link.a, link.b):
        assert len(end.ifname) <= 15 and end.ifname.startswith("zt")
    with pytest.raises(AttributeError):
        _ = topology.router


def test_veth_offloads_are_off(topology: Topology) -> None:
    features = topology.client.run(
        [tool("ethtool"), "-k", topology.iface("client", "proxy")]
    ).stdout
    for feature in (
        "tx-checksumming",
        "rx-checksumming",
        "generic-segmentation-offload",
        "tcp-segmentation-offload",
        "generic-receive-offload",
    ):
        assert f"{feature}: off" in features


def test_ipv6_is_usable_at_once(topology: Topology) -> None:
    # No DAD: binding a fresh address works immediately (else EADDRNOTAVAIL).
    addr = str(topology.address("client", "proxy", 6))
    topology.client.run(
        [
            tool("python3"),
            "-c",
            f"import socket;socket.socket(socket.AF_INET6).bind(('{addr}', 0))",
        ],
        check=True,
    )


def test_custom_spec_with_a_router(topology_factory) -> None:
    spec = TopologySpec.of(
        hosts=["a", HostSpec("r", forwarding=True), "b"],
        links=[
            LinkSpec("a", "r", ipv4="192.168.10.0/24", mtu=1400),
            LinkSpec("r", "b", ipv4="192.168.20.0/24"),
        ],
    )
    topo = topology_factory(spec)
    topo.a.add_route("default", via="192.168.10.2")
    topo.b.add_route("default", via="192.168.20.1")
    topo.a.run([*PING, "192.168.20.2"], check=True)
    mtu = topo.a.run([tool("cat"), f"/sys/class/net/{topo.iface('a', 'r')}/mtu"]).stdout.strip()
    assert mtu == "1400"


def test_topology_teardown_removes_everything(topology_factory, list_namespaces) -> None:
    topo = topology_factory()
    topo.server.spawn([tool("sleep"), "300"], name="sleeper")
    names = [h.name for h in topo.hosts.values()]
    topo.close()
    assert not any(Path(f"/run/netns/{n}").exists() for n in names)
    assert list_namespaces(topo.scope.tag) == []
    topo.close()  # the fixture's finalizer will call it again


def test_failed_build_leaves_nothing(
    topology_factory, list_namespaces, request: pytest.FixtureRequest
) -> None:
    from harness.state import state

    prefix = state(request.config).namer.prefix
    before = list_namespaces(prefix)
    # Host number 7 does not exist in a /30: fails after both namespaces were made.
    bad = TopologySpec.of(
        hosts=["a", "b"], links=[LinkSpec("a", "b", ipv4="10.9.9.0/30", b_index=7)]
    )
    with pytest.raises(IndexError):
        topology_factory(bad)
    assert list_namespaces(prefix) == before


@pytest.mark.pcap
def test_capture_sees_a_ping(topology: Topology, artifacts: TestArtifacts) -> None:
    iface = topology.iface("proxy", "client")
    with capture(topology.proxy, iface, "icmp") as cap:
        topology.client.run([*PING, str(topology.address("proxy", "client"))], check=True)
    assert cap.packet_count() == 2 and cap.captured == 2 and cap.dropped == 0
    assert cap.path.parent == artifacts.dir / "pcaps"
    assert cap in artifacts.captures
    text = cap.text()
    assert "ICMP echo request" in text and "ICMP echo reply" in text
    summary = cap.summary()
    assert str(cap.path) in summary and "2 packets on proxy:" in summary
    assert cap.path.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"  # classic pcap, not pcapng


@pytest.mark.pcap
def test_capture_holds_real_checksums(topology: Topology) -> None:
    """With offloads off, TCP leaves the veth with a full checksum (tcpdump -vv checks)."""
    server = topology.proxy.spawn(
        [
            tool("python3"),
            "-c",
            "import socket;s=socket.socket();s.bind(('0.0.0.0',7100));"
            "s.listen();c,_=s.accept();c.recv(10)",
        ],
        name="srv",
    )
    from harness.hosts.base import TcpListening

    server.wait_for(TcpListening(7100))
    with capture(topology.client, topology.iface("client", "proxy"), "tcp port 7100") as cap:
        topology.client.run(
            [
                tool("python3"),
                "-c",
                "import socket;s=socket.create_connection(("
                f"'{topology.address('proxy', 'client')}',7100));"
                "s.send(b'x');s.close()",
            ],
            check=True,
        )
        server.wait(5)
    verbose = cap.text(extra=("-vv",))
    assert "cksum" in verbose and "incorrect" not in verbose


def test_mtu_clamp(topology: Topology, netem: Faults) -> None:
    iface = topology.iface("client", "proxy")
    netem(topology.client, iface, mtu=1280)
    proxy = str(topology.address("proxy", "client"))
    assert not topology.client.run([*PING, "-M", "do", "-s", "1300", proxy]).ok
    topology.client.run([*PING, "-M", "do", "-s", "1200", proxy], check=True)
    netem.clear()
    topology.client.run([*PING, "-M", "do", "-s", "1400", proxy], check=True)


def test_loss_is_seeded_and_counted(topology: Topology, netem: Faults) -> None:
    iface = topology.iface("client", "proxy")
    applied = netem(topology.client, iface, loss_pct=25)
    proxy = str(topology.address("proxy", "client"))
    result = topology.client.run([tool("ping"), "-c", "40", "-i", "0.002", "-W", "1", proxy])
    received = int(result.stdout.split(" received")[0].rsplit(" ", 1)[1])
    if applied.method.startswith("nft-nth"):
        assert received == 30  # exactly every 4th request dropped
    else:
        assert 0 < received < 40


def test_netem_only_faults_skip_with_the_reason(topology: Topology, netem: Faults) -> None:
    if netem_support().available:
        pytest.skip("this kernel has sch_netem; nothing to check about the skip")
    with pytest.raises(pytest.skip.Exception, match="delay need sch_netem"):
        netem(topology.client, topology.iface("client", "proxy"), delay_ms=10)
