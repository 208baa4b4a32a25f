"""Fixtures of the tun2socks conformance suite.

Run it for one implementation per session (``--tun2socks ztun`` is the default)::

    pytest tests/conformance [--tun2socks sing-box] [-n 2] [--conformance-json F]

Every test marked ``conformance`` is one behaviour; the table (behaviour x
implementation) is printed at the end and written as JSON by :mod:`harness.conformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest
from conformance_path import (
    DATA_PORT,
    DEVICE,
    ECHO_PORT,
    SOCKS_PORT,
    UDP_ECHO_PORT,
    Path,
    ProxyKind,
    StartPath,
    TargetKind,
)

from harness import conformance
from harness.impls import DEFAULT_MTU, RunningImpl, Tun2Socks
from harness.peers.starters import (
    Socks5Server,
    start_danted,
    start_recording,
    start_tcp_data,
    start_tcp_echo,
    start_udp_echo,
)
from harness.topo import Topology


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # The root conftest loads harness.conformance; this covers a session without it
    # (the table then lacks --conformance-json, and needs this folder named under -n).
    conformance.register(config)


TARGET_STARTERS = {
    "echo": (start_tcp_echo, ECHO_PORT),
    "data": (start_tcp_data, DATA_PORT),
    "udp": (start_udp_echo, UDP_ECHO_PORT),
}
"""Target kinds a test can ask for; each runs on the server's IPv4 and IPv6 address."""


def _start_targets(topo: Topology, kinds: Iterable[TargetKind]) -> None:
    wanted = ["echo", *(k for k in kinds if k != "echo")]
    for kind in wanted:
        starter, port = TARGET_STARTERS[kind]
        for family in (4, 6):
            starter(topo.server, str(topo.address("server", "proxy", family)), port)


def _start_proxy(topo: Topology, kind: ProxyKind) -> Socks5Server:
    addr = str(topo.address("proxy", "client", 4))
    if kind == "danted":
        return start_danted(topo.proxy, addr, SOCKS_PORT)
    if kind == "recording":
        return start_recording(topo.proxy, addr, SOCKS_PORT)
    raise ValueError(f"unknown proxy kind {kind!r}")


@pytest.fixture
def start_path(
    topology: Topology,
    require_root: None,
    implementation: Tun2Socks,
    record_property: Callable[[str, object], None],
) -> Iterator[StartPath]:
    """``start_path(proxy="danted", *, targets=("echo",), mtu=1500) -> Path``.

    Starts the targets (``"echo"``, ``"data"``, ``"udp"``; the TCP echo always), the
    SOCKS5 server ``proxy`` (``"danted"``, ``"recording"``) in the proxy
    host and the implementation under test in the client, with its TUN ``DEVICE`` and the
    default routes into it; stops the implementation at the end (the topology's teardown
    stops the rest).
    """
    running: list[RunningImpl] = []

    def start(
        proxy: ProxyKind = "danted",
        *,
        targets: Iterable[TargetKind] = ("echo",),
        mtu: int = DEFAULT_MTU,
    ) -> Path:
        topo = topology
        _start_targets(topo, targets)
        server = _start_proxy(topo, proxy)
        impl = implementation.start(topo.client, device=DEVICE, proxy_url=server.url, mtu=mtu)
        running.append(impl)
        record_property(conformance.VERSION_PROPERTY, impl.version)
        path = Path(
            topo,
            server,
            impl,
            str(topo.address("server", "proxy", 4)),
            str(topo.address("server", "proxy", 6)),
        )
        return path

    yield start
    for impl in running:
        impl.stop()
