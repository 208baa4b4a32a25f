"""UDP flows in namespaces: the association bound (--max-udp-sessions, LRU) and the TUN's
queue (issue 16, item 5). How many datagrams a burst delivers is a speed figure: it lives
in `ztun bench --tests udp-burst`, not here."""

from __future__ import annotations

import os
import re

import pytest
from ztun_path import DEVICE, ECHO_PORT, UDP_ECHO_PORT, StartPath

from harness.hosts import LogLine
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

LIMIT, FLOWS = 4, 12


def _udp_sockets_of(pid: int) -> int:
    """UDP sockets ztun holds (its associations' relay sockets), from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            count += sum(1 for line in f.readlines()[1:] if line.split()[9] in inodes)
    return count


def test_max_udp_sessions_closes_the_least_recently_used(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--max-udp-sessions", str(LIMIT)))
    socks = [path.udp() for _ in range(FLOWS)]
    try:
        for sock in socks:
            payload = rng.randbytes(100)
            sock.sendto(payload, (path.server_v4, UDP_ECHO_PORT))
            assert sock.recvfrom(65535)[0] == payload
            assert _udp_sockets_of(path.ztun.process.pid) <= LIMIT
        # The first app socket's association was closed long ago: its next datagram
        # opens a new one (evicting the least recently used again) and is answered.
        socks[0].sendto(b"again", (path.server_v4, UDP_ECHO_PORT))
        assert socks[0].recvfrom(65535)[0] == b"again"
    finally:
        for sock in socks:
            sock.close()
    path.ztun.stop()
    stats = path.ztun.log_text()
    evicted = re.search(r'"udp_sessions_evicted": (\d+)', stats)
    assert evicted is not None and int(evicted.group(1)) == FLOWS + 1 - LIMIT, stats[-1500:]


def test_ztun_gives_its_tun_a_longer_queue(start_path: StartPath) -> None:
    """Bursts wait in the kernel's queue while ztun is off the CPU (ztun.tun.linux)."""
    path = start_path("danted")
    shown = path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).stdout
    assert " qlen 2000" in shown, shown


LOG_TIMEOUT = 10.0
NOFILE = 200  # soft = hard: ztun cannot raise it
BURST = 150  # 2 descriptors each through SOCKS5: 300 > NOFILE without a bound


def test_udp_flows_are_bounded_by_the_open_files_limit(  # type: ignore[no-untyped-def]
    start_path: StartPath, tmp_path, rng
) -> None:
    """Under a 200-descriptor limit and no --max-udp-sessions, ztun bounds UDP flows to
    (200 - 64) / 4 = 34: a burst of 150 flows is answered whole (the least recently used
    close) and a TCP connection after it is accepted. Without the bound the burst hit
    EMFILE at about 90 flows, which refused the TCP accept too."""
    from harness.impls.ztun import default_binary

    launcher = tmp_path / "ztun-nofile"
    launcher.write_text(
        f'#!/bin/sh\nexec {tool("prlimit")} --nofile={NOFILE}:{NOFILE} -- {default_binary()} "$@"\n'
    )
    launcher.chmod(0o755)
    path = start_path("danted", binary=str(launcher))
    socks = [path.udp() for _ in range(BURST)]
    try:
        for sock in socks:
            payload = rng.randbytes(64)
            sock.sendto(payload, (path.server_v4, UDP_ECHO_PORT))
            assert sock.recvfrom(65535)[0] == payload
    finally:
        for sock in socks:
            sock.close()
    with path.connect(ECHO_PORT) as conn:
        conn.sendall(b"after the burst")
        assert conn.recv(64) == b"after the burst"
    assert "at most 34 UDP flows hold an association (open files limit 200" in path.ztun.log_text()


def test_a_socks5_proxy_without_udp_associate_refuses_udp_at_once(start_path: StartPath) -> None:
    """microsocks answers UDP ASSOCIATE "command not supported" (0x07): the app gets ICMP
    port unreachable (ECONNREFUSED on its connected socket), as with a proxy that carries
    TCP only, instead of silence until its own timeout; the log says why; TCP still works."""
    path = start_path("microsocks")
    udp = path.udp(timeout=5)
    with udp:
        udp.connect((path.server_v4, UDP_ECHO_PORT))
        udp.send(b"no relay for this")
        with pytest.raises(ConnectionRefusedError):
            udp.recv(100)
    # The app's refusal can come before ztun's log line is read from its output: await it.
    for line in (
        r"refused UDP_ASSOCIATE 0\.0\.0\.0:0: command not supported \(0x07\)",
        "carries no UDP",
    ):
        path.ztun.process.wait_for(LogLine(line), timeout=LOG_TIMEOUT)
    with path.connect(ECHO_PORT) as sock:
        sock.sendall(b"tcp still")
        assert sock.recv(100) == b"tcp still"
