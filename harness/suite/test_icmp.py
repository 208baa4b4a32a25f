"""ICMP echo: ``ping`` from the client reaches an answer through the TUN (v4 and v6), and
an address that exists nowhere stays silent (optional).

SOCKS5 has no ICMP, so an implementation may answer echo requests itself or forward them
some other way; either is fine here -- the app must get its replies. Answering *every*
echo (even for addresses that do not exist) is a design choice some implementations make,
so that row is optional: reported, never failing the run.
"""

from __future__ import annotations

import pytest

from harness.suite.path import NOWHERE_V4, NOWHERE_V6, StartPath
from harness.timescale import scaled
from ztun.tools import tool

pytestmark = [pytest.mark.conformance]

PINGS = 3
PING_ARGS = ["-c", str(PINGS), "-i", "0.2", "-W", "2"]
PING_TIMEOUT = 20.0


def _ping(start_path: StartPath, *, v6: bool) -> None:
    path = start_path("danted")
    target = path.server_ip(v6)
    argv = [tool("ping"), *(["-6"] if v6 else ["-4"]), *PING_ARGS, target]
    result = path.client.run(argv, timeout=scaled(PING_TIMEOUT))
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


@pytest.mark.optional
@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_icmp_echo_nowhere_unanswered(start_path: StartPath, family: str) -> None:
    """An echo request to an address no host has (198.51.100.99, 2001:db8:ffff::99) gets no
    reply: a reply claims a host is up that does not exist, which misleads monitoring and
    path probes (optional: some implementations answer every echo by design)."""
    path = start_path("danted")
    target = NOWHERE_V6 if family == "v6" else NOWHERE_V4
    argv = [tool("ping"), "-6" if family == "v6" else "-4", *PING_ARGS, target]
    result = path.client.run(argv, timeout=scaled(PING_TIMEOUT))
    assert "0 received" in result.stdout, (
        f"{target} exists nowhere, yet: {result.stdout.strip().splitlines()[-2:]}"
    )
