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


@pytest.mark.netns
@pytest.mark.timeout(INNER_TIMEOUT + 60)
def test_suite_on_a_local_host_inside_a_namespace(topology_factory: object, tmp_path: Path) -> None:
    """``certify --topology single --single-host local`` from inside a namespace we made:
    the implementation, proxy and targets all run as plain children of the inner run."""
    topo: Topology = topology_factory(TopologySpec.of(hosts=["box"]))  # type: ignore[operator]
    box = topo.host("box")
    report = tmp_path / "report"
    done = box.run(
        [
            *(sys.executable, "-m", "harness", "certify", "--topology", "single"),
            *("--single-host", "local", "--report", str(report)),
            *("-k", "tcp_open or udp_echo_v4 or tcp_rst_from_server or ipv6_tcp"),
        ],
        timeout=INNER_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    document = json.loads((report / "report.json").read_text())
    column = document["implementations"]["ztun"]
    assert column["topology"] == "single"
    assert {k: v["outcome"] for k, v in column["results"].items()} == {
        "tcp_open": "pass",
        "tcp_rst_from_server": "pass",
        "ipv6_tcp": "pass",
        "udp_echo_v4": "pass",
    }
