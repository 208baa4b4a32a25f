"""The plugin end to end: nested pytest runs (``pytester``) that fail, leak, get killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ztun.tools import tool

# Each test runs whole pytest sessions in subprocesses: seconds each.
pytestmark = [pytest.mark.netns, pytest.mark.slow]

KILL_WAIT = 60.0

WRITES_NAMES = """
import json, os, pytest
from harness.capture import capture

def record(topology, tag):
    out = os.environ["ZT_OUT"]
    names = [h.name for h in topology.hosts.values()]
    names += [e.ifname for l in topology.links for e in (l.a, l.b)]
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(names, f)
"""


def _dead(pid: str) -> bool:
    """Gone, or a zombie whose new parent (init) has not reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _prefixes(names: list[str]) -> set[str]:
    return {n.split("-", 1)[0] for n in names}


def test_failing_test_leaves_no_namespace_and_attaches_evidence(
    pytester: pytest.Pytester,
    nested: Callable[..., pytest.RunResult],
    list_namespaces,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = pytester.mkdir("out")
    monkeypatch.setenv("ZT_OUT", str(out))
    pytester.makepyfile(
        test_inner=WRITES_NAMES
        + """
@pytest.mark.netns
def test_fails_midway(topology):
    record(topology, "fail")
    topology.server.spawn(["sh", "-c", "echo server says hi; exec sleep 300"], name="srv")
    with capture(topology.proxy, topology.iface("proxy", "client"), "icmp"):
        topology.client.run(["ping", "-c1", "-W2", str(topology.address("proxy", "client"))])
    assert False, "deliberate"

@pytest.mark.netns
def test_passes(topology):
    record(topology, "pass")
    with capture(topology.proxy, topology.iface("proxy", "client")):
        pass
"""
    )
    result = nested("-v")
    result.assert_outcomes(passed=1, failed=1)
    text = result.stdout.str()
    assert "ztun artifacts" in text and "deliberate" in text
    assert ".pcap" in text and "2 packets on proxy:" in text and "ICMP echo request" in text
    assert "srv.log" in text and "server says hi" in text
    assert "pytest --seed" in text
    names = json.loads((out / "fail.json").read_text()) + json.loads(
        (out / "pass.json").read_text()
    )
    for prefix in _prefixes(names):
        assert list_namespaces(prefix) == []
    run_dirs = list((pytester.path / "artifacts").iterdir())
    assert len(run_dirs) == 1
    kept = sorted(p.name for p in run_dirs[0].iterdir())
    assert kept == ["test_inner.py--test_fails_midway"], "a passing test's folder is deleted"
    folder = run_dirs[0] / kept[0]
    assert list((folder / "pcaps").glob("*.pcap")) and (folder / "server" / "srv.log").exists()
    assert "reproduce: pytest --seed" in (folder / "seed.txt").read_text()


def test_keep_pcaps_keeps_passing_tests(
    pytester: pytest.Pytester, nested: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_keep="""
import pytest
from harness.capture import capture

@pytest.mark.netns
def test_ok(topology):
    with capture(topology.client, topology.iface("client", "proxy")):
        pass
"""
    )
    nested("--keep-pcaps").assert_outcomes(passed=1)
    pcaps = list((pytester.path / "artifacts").rglob("*.pcap"))
    assert len(pcaps) == 1


def test_xdist_workers_use_distinct_names_and_share_the_seed(
    pytester: pytest.Pytester,
    nested: Callable[..., pytest.RunResult],
    list_namespaces,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = pytester.mkdir("out")
    monkeypatch.setenv("ZT_OUT", str(out))
    pytester.makepyfile(
        test_par=WRITES_NAMES
        + """
@pytest.mark.netns
@pytest.mark.parametrize("i", range(6))
def test_build(topology, seed, i):
    record(topology, f"t{i}")
    with open(os.path.join(os.environ["ZT_OUT"], f"seed{i}"), "w") as f:
        f.write(str(seed))
    topology.client.run(["ping", "-c1", "-W2", str(topology.address("proxy", "client"))],
                        check=True)
"""
    )
    result = nested("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=6)
    all_names: list[str] = []
    for i in range(6):
        all_names += json.loads((out / f"t{i}.json").read_text())
    assert len(all_names) == len(set(all_names)), "names collide across tests/workers"
    prefixes = _prefixes(all_names)
    assert len(prefixes) == 2 and all(p.endswith(("w0", "w1")) for p in prefixes)
    seeds = {(out / f"seed{i}").read_text() for i in range(6)}
    assert len(seeds) == 1
    assert f"seed {seeds.pop()}" in result.stdout.str()
    for prefix in prefixes:
        assert list_namespaces(prefix) == []


def test_leak_fails_the_run_and_is_cleaned(
    pytester: pytest.Pytester, nested: Callable[..., pytest.RunResult], list_namespaces
) -> None:
    pytester.makepyfile(
        test_leaky="""
import pytest
from harness.hosts.netns import NetnsHost
from harness.state import state

@pytest.mark.netns
def test_leaks(request, tmp_path):
    scope = state(request.config).namer.scope()
    NetnsHost(scope.netns("leaked"), log_dir=tmp_path)  # never closed
    print("LEAKED", scope.netns("leaked"))
"""
    )
    result = nested("-s")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "ztun leak check FAILED" in text
    leaked = text.split("LEAKED ", 1)[1].split()[0]
    assert f"namespace {leaked}" in text
    assert list_namespaces(leaked) == []


BLOCKS = """
import os, pathlib, pytest

@pytest.mark.netns
def test_blocks(topology):
    topology.server.spawn(["sleep", "300"], name="sleeper")
    names = " ".join(h.name for h in topology.hosts.values())
    pathlib.Path(os.environ["ZT_MARK"]).write_text(names)
    topology.client.run(["sleep", "300"], timeout=400)
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_blocking_run(pytester: pytest.Pytester) -> tuple[subprocess.Popen[bytes], list[str]]:
    pytester.makepyfile(test_block=BLOCKS)
    mark = pytester.path / "mark"
    env = dict(os.environ, ZT_MARK=str(mark))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "test_block.py",
            "--artifacts",
            str(pytester.path / "artifacts"),
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # A run started in the background by a non-interactive shell (nohup ... &) or by
        # an xdist worker inherits SIGINT ignored; a user's Ctrl-C is what is tested.
        preexec_fn=_default_sigint,
    )
    # The nested run announces its topology by writing the mark file; a bounded wait.
    deadline = time.monotonic() + KILL_WAIT
    while not mark.exists() or not mark.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"nested run never built its topology: {proc.stdout}")
        threading.Event().wait(0.05)
    return proc, mark.read_text().split()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_namespace(
    pytester: pytest.Pytester, nested_env: None, sig: signal.Signals
) -> None:
    proc, names = _start_blocking_run(pytester)
    assert all(Path(f"/run/netns/{n}").exists() for n in names)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=KILL_WAIT)
    assert proc.returncode != 0
    leftovers = [n for n in names if Path(f"/run/netns/{n}").exists()]
    assert leftovers == [], out.decode()


def test_cleanup_refuses_a_prefix_that_is_not_ours() -> None:
    """Only names the harness made (``zt...``) may go: another prefix is a usage error,
    said by the subcommand (not the top-level usage, which hides which part was wrong)."""
    cli = subprocess.run(
        [sys.executable, "-m", "harness", "cleanup", "--prefix", "veth"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2
    expected = "ztun-harness cleanup: error: --prefix must start with 'zt': only our names"
    assert cli.stderr.startswith(expected), cli.stderr


def test_sigkilled_run_is_cleaned_by_the_cli(pytester: pytest.Pytester, nested_env: None) -> None:
    proc, names = _start_blocking_run(pytester)
    pids = subprocess.run(
        [tool("ip"), "netns", "pids", names[-1]], capture_output=True, text=True, check=True
    ).stdout.split()
    assert pids, "the sleeper runs inside the server namespace"
    proc.kill()
    proc.communicate(timeout=KILL_WAIT)
    assert all(Path(f"/run/netns/{n}").exists() for n in names), "SIGKILL skips finalizers"
    prefix = names[0].split("-", 1)[0] + "-"
    cli = subprocess.run(
        [sys.executable, "-m", "harness", "cleanup", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=KILL_WAIT,
    )
    assert cli.returncode == 0, cli.stderr
    for name in names:
        assert f"removed namespace {name}" in cli.stdout
        assert not Path(f"/run/netns/{name}").exists()
    for pid in pids:
        assert _dead(pid)


def test_cleanup_keeps_live_runs(
    request: pytest.FixtureRequest, require_root: None, tmp_path: Path
) -> None:
    from harness.hosts.netns import NetnsHost
    from harness.state import state

    scope = state(request.config).namer.scope()  # owned by this (live) process
    host = NetnsHost(scope.netns("live"), log_dir=tmp_path)
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "harness", "cleanup", "--prefix", scope.prefix],
            capture_output=True,
            text=True,
            timeout=KILL_WAIT,
        )
        assert f"kept {host.name}" in cli.stdout
        assert Path(f"/run/netns/{host.name}").exists()
    finally:
        host.close()


def test_markers_and_header(
    pytester: pytest.Pytester, nested: Callable[..., pytest.RunResult]
) -> None:
    pytester.makepyfile(
        test_m="""
import pytest

@pytest.mark.netns
@pytest.mark.vm
@pytest.mark.linux
@pytest.mark.windows
@pytest.mark.macos
@pytest.mark.slow
@pytest.mark.pcap
@pytest.mark.conformance
def test_marked(rng):
    print("RNG", rng.random())
"""
    )
    first = nested("--strict-markers", "--seed", "1234", "-s")
    first.assert_outcomes(passed=1)
    text = first.stdout.str()
    assert "seed 1234" in text and "kernel " in text and "tcpdump " in text
    assert "tun2socks under test: ztun" in text and "faults: " in text
    again = nested("--seed", "1234", "-s").stdout.str()
    value = text.split("RNG ", 1)[1].split()[0]
    assert f"RNG {value}" in again, "same seed and node id give the same rng"
    other = nested("--seed", "1235", "-s").stdout.str()
    assert f"RNG {value}" not in other
