"""Datagrams larger than the TUN's MTU (1500): the kernel fragments them before the TUN,
ztun reassembles them, and fragments what it writes back (issue 16, item 4).

Real TUN, real kernel fragmentation and reassembly on the app's side, danted relaying.
"""

from __future__ import annotations

import pytest
from ztun_path import UDP_ECHO_PORT, StartPath

from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_a_4000_byte_udp_datagram_goes_through_whole(start_path: StartPath, rng, v6) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    server = path.server_v6 if v6 else path.server_v4
    with path.udp(v6=v6) as sock:
        for size in (4000, 1473, 8192):  # 1473: one byte past a single IPv4 packet
            payload = rng.randbytes(size)
            sock.sendto(payload, (server, UDP_ECHO_PORT))
            data, source = sock.recvfrom(65535)
            assert data == payload, f"{size}-byte datagram came back as {len(data)} bytes"
            assert source[:2] == (server, UDP_ECHO_PORT)
    path.ztun.stop()
    log = path.ztun.log_text()
    assert '"fragment_reassembled": ' in log and '"fragmented_to_tun": ' in log, log[-2000:]


def test_a_3000_byte_ping_goes_through_whole(start_path: StartPath) -> None:
    """`--icmp local` (the default): ztun answers, the reply is fragmented to the MTU."""
    path = start_path("danted")
    for target in (path.server_v4, path.server_v6):
        result = path.topo.client.run(
            [tool("ping"), "-c", "3", "-i", "0.2", "-W", "2", "-s", "3000", "-M", "dont", target],
            timeout=20,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0% packet loss" in result.stdout
        assert "3008 bytes from" in result.stdout  # 3000 of data + the 8-byte ICMP header


def test_fragments_reach_the_same_worker(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    """--workers 2: steering sends every fragment to worker 0 (only the first has ports),
    so a datagram from any source port is reassembled, whichever worker its session has."""
    path = start_path("danted", extra=("--workers", "2"))
    for _ in range(6):  # six source ports: both workers' share of sessions
        with path.udp() as sock:
            payload = rng.randbytes(4000)
            sock.sendto(payload, (path.server_v4, UDP_ECHO_PORT))
            assert sock.recvfrom(65535)[0] == payload
