"""Fixtures of the golden-trace regression tests, and the diff they fail with.

``pytest_assertrepr_compare`` turns ``assert actual == golden`` on two canonical traces
into a unified diff of their text (golden_check.py attaches the same diff, untruncated,
and both pcaps to the failure report).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from golden_bench import (
    DNS_ANSWER,
    DNS_NAME,
    DNS_PORT,
    ECHO_PORT,
    SOCKS_PORT,
    Bench,
    BenchFactory,
)
from golden_scenarios import Scenario

from harness.impls import RunningImpl, Ztun
from harness.pcap import assertrepr_compare
from harness.peers.starters import start_danted, start_dnsmasq, start_tcp_echo
from harness.topo import Topology

GOLDEN_DIR_NAME = "pcaps"

# Its asserts compare canonical traces: rewrite them so pytest_assertrepr_compare runs.
pytest.register_assert_rewrite("golden_check")


def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    return assertrepr_compare(op, left, right)


@pytest.fixture(scope="session")
def golden_dir(request: pytest.FixtureRequest) -> Path:
    return request.config.rootpath / GOLDEN_DIR_NAME


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """``pytest --update-golden`` (registered by harness.plugin): re-record, don't diff."""
    return bool(request.config.getoption("update_golden"))


@pytest.fixture
def bench_factory(topology: Topology, require_root: None) -> Iterator[BenchFactory]:
    """``bench_factory(scenario, binary=None)``: servers, danted and ztun for a scenario."""
    running: list[RunningImpl] = []

    def build(scenario: Scenario, binary: str | None = None) -> Bench:
        server, proxy = topology.server, topology.proxy
        v4 = str(topology.address("server", "proxy", 4))
        v6 = str(topology.address("server", "proxy", 6))
        for addr in (v4, v6):
            start_tcp_echo(server, addr, ECHO_PORT)
        if scenario.dns:
            start_dnsmasq(server, v4, {DNS_NAME: DNS_ANSWER}, port=DNS_PORT)
        proxy_v4 = str(topology.address("proxy", "client", 4))
        socks = start_danted(proxy, proxy_v4, SOCKS_PORT)
        impl = Ztun(binary=binary, extra_args=scenario.ztun_args)
        ztun = impl.start(topology.client, device="zt0", proxy_url=socks.url)
        running.append(ztun)
        return Bench(topology, ztun, v4, v6, proxy_v4)

    yield build
    for ztun in running:
        ztun.stop()
