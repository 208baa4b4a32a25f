"""testinfra on every kind of Host: the netns backend and paramiko:// to a QEMU guest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness.hosts import CommandTimeout, Host, TcpListening
from harness.hosts.qemu import QemuHost
from harness.testinfra_backends import testinfra_host
from harness.topo import Topology
from ztun.tools import guest_tool

LISTEN_PORT = 8081


def _listener(host: Host) -> None:
    host.spawn(
        [guest_tool("python3"), "-m", "http.server", "--bind", "0.0.0.0", str(LISTEN_PORT)],
        name="listener",
        ready=TcpListening(LISTEN_PORT),
        timeout=60.0,
    )


@pytest.mark.netns
def test_testinfra_on_a_namespace(topology: Topology, testinfra_for: Callable[[Host], Any]) -> None:
    client = topology.client
    infra = testinfra_for(client)
    assert infra.backend.get_connection_type() == "netns"
    assert infra.package("tcpdump").is_installed
    iface = topology.iface("client", "proxy")
    expected = str(topology.address("client", "proxy"))
    assert expected in infra.interface(iface).addresses
    assert iface in infra.interface.names()
    assert f"dev {iface}" in infra.check_output("ip route")
    _listener(client)
    assert infra.socket(f"tcp://0.0.0.0:{LISTEN_PORT}").is_listening
    # The namespace's sockets, not the root namespace's: nothing listens on 22 in here.
    assert not infra.socket("tcp://0.0.0.0:22").is_listening


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.linux
def test_testinfra_on_a_vm(qemu_host: QemuHost, vm_testinfra: Any) -> None:
    infra = vm_testinfra
    assert infra.backend.get_connection_type() == "paramiko"
    assert infra.backend.get_hostname() == "127.0.0.1"
    assert infra.package("tcpdump").is_installed
    assert infra.package("microsocks").is_installed
    assert "10.0.2.15" in infra.interface("eth0").addresses
    routes = infra.check_output("ip route")
    assert "10.0.2.0/24 dev eth0" in routes
    # restrict=on: QEMU's DHCP offers no router, so the guest has no way out at all.
    assert "default" not in routes
    assert infra.socket("tcp://0.0.0.0:22").is_listening
    _listener(qemu_host)
    assert infra.socket(f"tcp://0.0.0.0:{LISTEN_PORT}").is_listening
    assert infra.file("/mnt/repo/pyproject.toml").contains("ztun")


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.linux
def test_testinfra_commands_time_out(qemu_host: QemuHost) -> None:
    infra = testinfra_host(qemu_host, timeout=1.0)
    with pytest.raises(CommandTimeout):
        infra.run("sleep 20")
    assert infra.run("true").rc == 0
