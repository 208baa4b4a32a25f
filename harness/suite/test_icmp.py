"""ICMP echo: ``ping`` from the client reaches an answer through the TUN (v4 and v6).

SOCKS5 has no ICMP, so an implementation may answer echo requests itself or forward them
some other way; either is fine here -- the app must get its replies.
"""

from __future__ import annotations

import pytest

from harness.suite.path import StartPath
from ztun.tools import tool

pytestmark = [pytest.mark.conformance]

PINGS = 3
PING_ARGS = ["-c", str(PINGS), "-i", "0.2", "-W", "2"]
PING_TIMEOUT = 20.0


def _ping(start_path: StartPath, *, v6: bool) -> None:
    path = start_path("danted")
    target = path.server_ip(v6)
    argv = [tool("ping"), *(["-6"] if v6 else ["-4"]), *PING_ARGS, target]
    result = path.client.run(argv, timeout=PING_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}{result.stderr}"
    assert f"{PINGS} received" in result.stdout, result.stdout


@pytest.mark.timeout(60)
def test_icmp_echo(start_path: StartPath) -> None:
    """ping (IPv4) to a server through the TUN gets every reply: SOCKS5 carries no ICMP,
    so the implementation must answer or forward it, or reachability checks all fail."""
    _ping(start_path, v6=False)


@pytest.mark.timeout(60)
def test_icmpv6_echo(start_path: StartPath) -> None:
    """ping -6 to a server through the TUN gets every reply (ICMPv6 echo, RFC 4443): the
    IPv4 row's promise for IPv6."""
    _ping(start_path, v6=True)
