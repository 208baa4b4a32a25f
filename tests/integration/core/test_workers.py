"""`ztun run --workers N`: a multi-queue TUN, one worker process per queue, eBPF steering.

What must hold: every flow's two directions meet in one worker (bytes arrive exact and
every worker carries some of the flows), UDP sessions stay whole per source, ICMP is
answered, and the parent stops everything -- device included -- on a signal or when a
worker dies.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import select
import signal

import pytest
from test_ztun_core import download, echo_half_closed, echo_once, upload
from ztun_path import DEVICE, ECHO_PORT, UDP_ECHO_PORT, Path, StartPath

from harness.peers.targets import seeded_sha256
from ztun.redirect import table_name
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

MIB = 1 << 20
WORKER_STATS = re.compile(r"ztun\[w(\d+)\]: ztun stopped stats=(\{.*\})")


def worker_stats(path: Path) -> dict[int, dict[str, int]]:
    """Stop ztun and read each worker's final counters from its log line."""
    path.ztun.stop()
    found = {int(m[1]): json.loads(m[2]) for m in WORKER_STATS.finditer(path.ztun.log_text())}
    return found


def worker_pids(path: Path) -> list[int]:
    pid = path.ztun.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_flows_spread_over_workers_and_stay_whole(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--workers", "2"))
    assert len(worker_pids(path)) == 2
    payloads = [rng.randbytes(rng.randrange(1, 20000)) for _ in range(120)]

    def exchange(payload: bytes) -> bytes:
        return echo_half_closed(path.connect(ECHO_PORT, timeout=30), payload)

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        assert list(pool.map(exchange, payloads)) == payloads
    seed = rng.randrange(1 << 31)
    assert upload(path, 16 * MIB, seed) == (16 * MIB, seeded_sha256(seed, 16 * MIB))
    assert download(path, 16 * MIB, seed, v6=True) == (16 * MIB, seeded_sha256(seed, 16 * MIB))
    stats = worker_stats(path)
    assert sorted(stats) == [0, 1], path.ztun.log_text()[-3000:]
    flows = [stats[w].get("tcp_flows", 0) for w in (0, 1)]
    assert sum(flows) == len(payloads) + 2
    # Source ports are random: 122 flows all landing on one worker would mean no steering.
    assert min(flows) > 0, flows
    for counters in stats.values():  # no answer from the listener went to the wrong worker
        assert counters.get("tcp_unknown_nat_port", 0) == 0
    # The kernel NAT (one program, maps shared by the workers) took every flow each
    # worker opened, and carried the bulk of the bytes.
    kernel = [stats[w]["kernel_nat"] for w in (0, 1)]
    assert [k["installed"] for k in kernel] == flows
    assert sum(k.get("bytes_up", 0) for k in kernel) >= 16 * MIB
    assert sum(k.get("bytes_down", 0) for k in kernel) >= 16 * MIB


def test_udp_sessions_and_icmp_with_workers(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--workers", "2"))
    for v6, server in ((False, path.server_v4), (True, path.server_v6)):
        for _ in range(8):  # 8 source ports: both workers get some
            with path.udp(v6=v6) as sock:
                for _ in range(3):
                    payload = rng.randbytes(rng.randrange(1, 1200))
                    sock.sendto(payload, (server, UDP_ECHO_PORT))
                    data, source = sock.recvfrom(65535)
                    assert (data, source[:2]) == (payload, (server, UDP_ECHO_PORT))
    for target in (path.server_v4, path.server_v6):
        result = path.topo.client.run(
            [tool("ping"), "-c", "2", "-i", "0.2", "-W", "2", target], timeout=20
        )
        assert result.returncode == 0, result.stdout + result.stderr
    stats = worker_stats(path)
    sessions = [stats[w].get("udp_sessions_total", 0) for w in (0, 1)]
    assert sum(sessions) == 16 and min(sessions) > 0, sessions


def test_a_dead_worker_stops_ztun_and_removes_the_device(start_path: StartPath) -> None:
    path = start_path("danted", extra=("--workers", "2"))
    assert echo_once(path, b"before") == b"before"
    os.kill(worker_pids(path)[1], signal.SIGKILL)
    assert path.ztun.process.wait(timeout=20) == 1
    log = path.ztun.log_text()
    assert "worker 1" in log and "stopping the others" in log, log[-2000:]
    assert path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).returncode != 0


def test_sigterm_stops_every_worker_and_removes_the_device(start_path: StartPath) -> None:
    path = start_path("danted", extra=("--workers", "3"))
    pids = worker_pids(path)
    assert len(pids) == 3
    assert echo_once(path, b"three workers") == b"three workers"
    assert path.ztun.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived ztun"
    assert path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).returncode != 0


def test_redirect_with_workers(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--workers", "2", "--redirect"))
    payloads = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(40)]
    assert [echo_once(path, p) for p in payloads] == payloads
    stats = worker_stats(path)
    redirected = [stats[w].get("tcp_flows_redirected", 0) for w in (0, 1)]
    assert sum(redirected) == len(payloads), redirected
    # Which worker accepts a redirected connection is the kernel's choice (shared
    # listeners): only the total is a contract.
    tables = path.topo.client.run([tool("nft"), "list", "tables"], timeout=5).stdout
    assert table_name(DEVICE) not in tables, "the parent removes its nftables table on exit"


def test_workers_end_when_their_parent_is_killed(start_path: StartPath) -> None:
    """SIGKILL leaves the parent no chance to stop anyone: the kernel's PR_SET_PDEATHSIG
    must, or orphans would keep the device's queues (and the device) alive."""
    path = start_path("danted", extra=("--workers", "2"))
    pids = worker_pids(path)
    pidfds = [os.pidfd_open(pid) for pid in pids]
    try:
        path.ztun.process.send_signal(signal.SIGKILL)
        path.ztun.process.wait(timeout=10)
        for pidfd in pidfds:
            readable, _, _ = select.select([pidfd], [], [], 20)
            assert readable, "a worker outlived its parent by 20 s"
    finally:
        for pidfd in pidfds:
            os.close(pidfd)
    assert path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).returncode != 0
