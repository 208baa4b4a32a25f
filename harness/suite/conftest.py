"""Fixtures of the tun2socks conformance suite (shipped in the package: ``harness.suite``).

Run it for one implementation per session::

    ztun-harness certify [--tun2socks sing-box | --tun2socks-command ...] [-n 2]
    pytest --pyargs harness.suite [--tun2socks ...] [-n 2] [--report DIR]

Every test here is one behaviour (marked ``conformance``; ``optional`` ones may fail
without failing the run); the table (behaviour x implementation) is printed at the end
and written by :mod:`harness.conformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest

from harness import conformance
from harness.hosts import Host
from harness.impls import DEFAULT_MTU, RunningImpl, Tun2Socks
from harness.peers.starters import (
    Socks5Server,
    start_danted,
    start_recording,
    start_tcp_data,
    start_tcp_echo,
    start_udp_echo,
)
from harness.state import state
from harness.suite.path import (
    DATA_PORT,
    DEVICE,
    ECHO_PORT,
    SINGLE_MAP,
    SINGLE_ROUTES,
    SINGLE_V4_TARGET,
    SINGLE_V6_TARGET,
    SOCKS_PORT,
    UDP_ECHO_PORT,
    Path,
    ProxyKind,
    StartPath,
    TargetKind,
    Testbed,
)
from harness.topo import Topology

__all__ = ["pytest_configure", "start_path", "testbed"]


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # harness.plugin registers the table too; this keeps a session that loads the suite
    # without the plugin's entry point (-p no:ztun_harness is not supported) explicit.
    conformance.register(config)


TARGET_STARTERS = {
    "echo": (start_tcp_echo, ECHO_PORT),
    "data": (start_tcp_data, DATA_PORT),
    "udp": (start_udp_echo, UDP_ECHO_PORT),
}
"""Target kinds a test can ask for; each runs on the server's IPv4 and IPv6 address."""


def netns_testbed(topo: Topology) -> Testbed:
    """client -- proxy -- server; everything routed into the TUN."""
    from harness.impls import DEFAULT_ROUTES

    server_v4 = str(topo.address("server", "proxy", 4))
    server_v6 = str(topo.address("server", "proxy", 6))
    return Testbed(
        kind="netns",
        client=topo.client,
        proxy_host=topo.proxy,
        server=topo.server,
        proxy_listen=str(topo.address("proxy", "client", 4)),
        server_v4=server_v4,
        server_v6=server_v6,
        listen_v4=server_v4,
        listen_v6=server_v6,
        routes=DEFAULT_ROUTES,
        uplink=topo.iface("client", "proxy"),
    )


def single_testbed(host: Host) -> Testbed:
    """One host: targets on loopback, reached at documentation addresses through the
    recording server's map; only the documentation prefixes routed into the TUN."""
    return Testbed(
        kind="single",
        client=host,
        proxy_host=host,
        server=host,
        proxy_listen="127.0.0.1",
        server_v4=SINGLE_V4_TARGET,
        server_v6=SINGLE_V6_TARGET,
        listen_v4="127.0.0.1",
        listen_v6="::1",
        routes=SINGLE_ROUTES,
        uplink=None,
        address_map=SINGLE_MAP,
    )


@pytest.fixture
def testbed(request: pytest.FixtureRequest) -> Testbed:
    """Where this behaviour's parts run (``--topology``)."""
    if state(request.config).topology == "single":
        return single_testbed(request.getfixturevalue("single_host"))
    return netns_testbed(request.getfixturevalue("topology"))


def _start_targets(bed: Testbed, kinds: Iterable[TargetKind]) -> None:
    wanted = ["echo", *(k for k in kinds if k != "echo")]
    for kind in wanted:
        starter, port = TARGET_STARTERS[kind]
        for address in (bed.listen_v4, bed.listen_v6):
            starter(bed.server, address, port)


def _start_proxy(
    bed: Testbed, kind: ProxyKind, *, credentials: tuple[str, str] | None, faults: Iterable[str]
) -> Socks5Server:
    user, password = credentials or (None, None)
    if kind == "danted" and bed.kind == "netns" and credentials is None and not faults:
        return start_danted(bed.proxy_host, bed.proxy_listen, SOCKS_PORT)
    if kind in ("danted", "recording"):
        # In the single topology every documentation prefix is routed into the TUN: a
        # target in one that the map does not name must be refused, never dialled (the
        # dial would loop back into the implementation under test).
        return start_recording(
            bed.proxy_host,
            bed.proxy_listen,
            SOCKS_PORT,
            user=user,
            password=password,
            faults=tuple(faults),
            address_map=bed.address_map,
            unreachable=bed.routes if bed.kind == "single" else (),
        )
    raise ValueError(f"unknown proxy kind {kind!r}")


@pytest.fixture
def start_path(
    testbed: Testbed,
    require_root: None,
    implementation: Tun2Socks,
    record_property: Callable[[str, object], None],
) -> Iterator[StartPath]:
    """``start_path(proxy="danted", *, targets=("echo",), mtu=1500, ...) -> Path``.

    Starts the targets (``"echo"``, ``"data"``, ``"udp"``; the TCP echo always), the
    SOCKS5 server ``proxy`` (``"danted"``, ``"recording"``; with ``credentials`` or
    ``faults`` always the recording server) in the proxy host and the implementation under
    test in the client, with its TUN ``DEVICE`` and the testbed's routes into it. The
    implementation is given the proxy's URL, or ``url(proxy)`` when a behaviour needs
    another one (wrong credentials, a port where nothing listens). Stops the
    implementation at the end (the testbed's teardown stops the rest).
    """
    running: list[RunningImpl] = []

    def start(
        proxy: ProxyKind = "danted",
        *,
        targets: Iterable[TargetKind] = ("echo",),
        mtu: int = DEFAULT_MTU,
        credentials: tuple[str, str] | None = None,
        faults: Iterable[str] = (),
        url: Callable[[Socks5Server], str] | None = None,
    ) -> Path:
        _start_targets(testbed, targets)
        server = _start_proxy(testbed, proxy, credentials=credentials, faults=faults)
        impl = implementation.start(
            testbed.client,
            device=DEVICE,
            proxy_url=url(server) if url is not None else server.url,
            mtu=mtu,
            routes=testbed.routes,
        )
        running.append(impl)
        record_property(conformance.VERSION_PROPERTY, impl.version)
        return Path(testbed, server, impl)

    yield start
    for impl in running:
        impl.stop()
