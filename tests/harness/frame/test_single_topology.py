"""The single-host topology's own parts: LocalHost refuses the root namespace, the plugin
refuses ``--single-host local`` there, and inside a namespace of ours the shipped suite
runs on a LocalHost (the code path of a machine without namespaces)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.hosts.local import LocalHost, RootNamespaceRefused, in_root_netns
from harness.plugin import shares_one_host
from harness.topo import Topology, TopologySpec

INNER_TIMEOUT = 600.0


@pytest.mark.linux
def test_local_host_refuses_the_root_namespace(tmp_path: Path) -> None:
    if not in_root_netns():
        pytest.skip("this run is not in the root network namespace")
    with pytest.raises(RootNamespaceRefused, match="must not be the root network namespace"):
        LocalHost(log_dir=tmp_path)


@pytest.mark.linux
def test_single_host_local_in_the_root_namespace_is_a_usage_error(tmp_path: Path) -> None:
    if not in_root_netns():
        pytest.skip("this run is not in the root network namespace")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "--pyargs", "harness.suite"),
            *("-p", "no:cacheprovider", "--collect-only", "-q"),
            *("--topology", "single", "--single-host", "local"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "root network namespace" in done.stderr


CORE_BEHAVIOURS = (
    "tcp_open or tcp_half_close or tcp_rst or tcp_refused or ipv6_tcp"
    " or udp_echo_v4 or ipv6_udp or dns_over_udp or icmp"
)
"""The core TCP, UDP and ICMP behaviours: both topologies must give them the same verdicts."""
CORE_COUNT = 15
"""How many behaviours CORE_BEHAVIOURS selects (so a renamed one cannot drop out unseen)."""


SHARED_HOST_BEHAVIOURS = (
    "tcp_open or tcp_half_close or tcp_rst or tcp_refused or ipv6_tcp or udp_echo_v4"
)
"""A quick selection that clashes when two run at once on one host (every one starts the
TCP echo target on the same loopback port, a TUN named ctun0 and the same routes)."""
SHARED_HOST_COUNT = 9
"""How many behaviours SHARED_HOST_BEHAVIOURS selects."""


def certify_command(report: Path, *options: str, select: str = CORE_BEHAVIOURS) -> list[str]:
    return [
        *(sys.executable, "-m", "harness", "certify", "--tun2socks", "ztun"),
        *("--report", str(report), "-k", select, *options),
    ]


def outcomes(report: Path) -> tuple[str, dict[str, str], set[str]]:
    """(topology, behaviour -> outcome, optional behaviours) of a one-column report."""
    document = json.loads((report / "report.json").read_text())
    (column,) = document["implementations"].values()
    optional = {b["id"] for b in document["behaviours"] if b["optional"]}
    return column["topology"], {k: v["outcome"] for k, v in column["results"].items()}, optional


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(2 * INNER_TIMEOUT + 60)
def test_single_topology_on_a_local_host_matches_the_netns_topology(
    topology_factory: object, tmp_path: Path, nested_env: None
) -> None:
    """``certify --topology single --single-host local`` from inside a namespace this test
    made -- the implementation, the recording proxy and the targets all plain children of
    the inner run on a LocalHost, the code path of a machine without namespaces -- gives
    ztun the verdicts the netns topology gives it on the core TCP, UDP and ICMP behaviours,
    and every required one passes."""
    topo: Topology = topology_factory(TopologySpec.of(hosts=["box"]))  # type: ignore[operator]
    single_report, netns_report = tmp_path / "single", tmp_path / "netns"
    single = topo.host("box").run(
        certify_command(single_report, "--topology", "single", "--single-host", "local", "-n", "2"),
        timeout=INNER_TIMEOUT,
    )
    assert single.returncode == 0, single.stdout[-4000:] + single.stderr[-2000:]
    netns = subprocess.run(
        certify_command(netns_report, "--topology", "netns"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT,
        check=False,
    )
    assert netns.returncode == 0, netns.stdout[-4000:] + netns.stderr[-2000:]

    single_topology, single_outcomes, optional = outcomes(single_report)
    netns_topology, netns_outcomes, _ = outcomes(netns_report)
    assert (single_topology, netns_topology) == ("single", "netns")
    assert len(single_outcomes) == CORE_COUNT, sorted(single_outcomes)
    assert single_outcomes == netns_outcomes
    required = {k: v for k, v in single_outcomes.items() if k not in optional}
    assert set(required.values()) == {"pass"}, required


@pytest.mark.parametrize(
    ("topology", "single_host", "platform_name", "shared"),
    [
        ("single", "local", "linux", True),
        ("single", "auto", "darwin", True),
        ("single", "auto", "win32", True),
        ("single", "auto", "linux", False),
        ("single", "namespace", "linux", False),
        ("netns", "local", "linux", False),
    ],
)
def test_only_a_local_single_host_is_shared_by_every_behaviour(
    topology: str, single_host: str, platform_name: str, shared: bool
) -> None:
    """Where ``--single-host`` resolves to this machine (``local``; ``auto`` on macOS and
    Windows) every behaviour shares one host; a namespace per behaviour shares nothing."""
    assert shares_one_host(topology, single_host, platform_name) is shared


@pytest.mark.netns
@pytest.mark.timeout(INNER_TIMEOUT + 60)
def test_single_host_local_runs_one_behaviour_at_a_time(
    topology_factory: object, tmp_path: Path, nested_env: None
) -> None:
    """``-n 2`` on a local single host: two behaviours at once would clash on that host (a
    second target's bind of the same loopback port fails with EADDRINUSE, a second TUN
    named ctun0 with EBUSY, a second route for 192.0.2.0/24 with EEXIST; before the plugin
    serialised, 6 of these 9 failed that way). The run says once that it goes one
    behaviour at a time, and every behaviour passes."""
    topo: Topology = topology_factory(TopologySpec.of(hosts=["box"]))  # type: ignore[operator]
    report = tmp_path / "single"
    done = topo.host("box").run(
        certify_command(
            report,
            *("--topology", "single", "--single-host", "local", "-n", "2"),
            select=SHARED_HOST_BEHAVIOURS,
        ),
        timeout=INNER_TIMEOUT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert output.count("runs one behaviour at a time, not 2 at once") == 1, output[-4000:]
    topology, results, _ = outcomes(report)
    assert topology == "single"
    assert len(results) == SHARED_HOST_COUNT, sorted(results)
    assert set(results.values()) == {"pass"}, results
