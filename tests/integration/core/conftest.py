"""Fixtures for ztun's integration tests (see ztun_path.py for the shape of a path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ztun_path import DATA_PORT, DEVICE, ECHO_PORT, SOCKS_PORT, UDP_ECHO_PORT, Path, StartPath

from harness.impls import RunningImpl, Ztun
from harness.peers.starters import (
    start_danted,
    start_microsocks,
    start_tcp_data,
    start_tcp_echo,
    start_udp_echo,
)
from harness.topo import Topology


@pytest.fixture
def servers(topology: Topology) -> Topology:
    server = topology.server
    v4 = str(topology.address("server", "proxy", 4))
    v6 = str(topology.address("server", "proxy", 6))
    for addr in (v4, v6):
        start_tcp_data(server, addr, DATA_PORT)
        start_tcp_echo(server, addr, ECHO_PORT)
        start_udp_echo(server, addr, UDP_ECHO_PORT)
    return topology


@pytest.fixture
def start_path(servers: Topology, require_root: None) -> Iterator[StartPath]:
    """start_path(proxy="danted"|"microsocks", user=None, password=None, url=None, extra=(),
    binary=None): `binary` runs another ztun launcher than the venv's."""
    running: list[RunningImpl] = []

    def start(
        proxy: str = "danted",
        *,
        user: str | None = None,
        password: str | None = None,
        url: str | None = None,
        extra: tuple[str, ...] = (),
        binary: str | None = None,
    ) -> Path:
        topo = servers
        proxy_addr = str(topo.address("proxy", "client", 4))
        if proxy == "microsocks":
            server = start_microsocks(topo.proxy, proxy_addr, SOCKS_PORT, user, password)
        else:
            server = start_danted(topo.proxy, proxy_addr, SOCKS_PORT)
        proxy_url = url or server.url
        impl = Ztun(binary=binary, extra_args=extra).start(
            topo.client, device=DEVICE, proxy_url=proxy_url
        )
        running.append(impl)
        return Path(
            topo,
            server,
            impl,
            str(topo.address("server", "proxy", 4)),
            str(topo.address("server", "proxy", 6)),
        )

    yield start
    for impl in running:
        impl.stop()
