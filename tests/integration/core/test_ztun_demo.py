"""`ztun demo` -- the README's first command -- end to end, with each SOCKS5 server it offers.

The demo builds its own client / proxy / server namespaces (prefix ``ztdemo-<pid>-``) and
removes them; these tests run it as a user would and check what it prints and leaves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ztun import netns
from ztun.demo import DNS_NAME, PREFIX, SERVER_V4

DEMO_TIMEOUT = 180.0


@pytest.mark.parametrize("socks", ["builtin", "microsocks", "danted"])
def test_demo_carries_tcp_udp_and_icmp(socks: str, require_root: None) -> None:
    """HTTP download matched by hash, a DNS answer that came back over UDP ASSOCIATE (the
    built-in server relays between two subnets, so it must send from the server-side
    address), a ping answered, exit 0, and no namespace of its own left behind."""
    with subprocess.Popen(
        [sys.executable, "-m", "ztun", "demo", "--socks", socks, "--size", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        try:
            out, err = demo.communicate(timeout=DEMO_TIMEOUT)
        finally:
            if demo.poll() is None:
                demo.terminate()  # its own teardown removes the namespaces
                demo.wait(timeout=30)
    assert demo.returncode == 0, out + err
    assert "sha256 matches" in out
    dns = next(line for line in out.splitlines() if f"DNS A {DNS_NAME}" in line)
    assert dns.rsplit("-> ", 1)[1].startswith(SERVER_V4), dns
    assert "0% packet loss" in out
    assert "traffic flowed through ztun" in out
    assert netns.list_names(f"{PREFIX}{demo.pid}-") == []
