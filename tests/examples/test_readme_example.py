"""The README's example, kept runnable: a user's whole test of a tun2socks in ~15 lines."""

import hashlib
import socket

import pytest

from harness.assertions import assert_checksums_ok, assert_socks5_roundtrip
from harness.capture import capture
from harness.peers.starters import start_recording, start_tcp_echo


@pytest.mark.netns
def test_echo_through_the_tun2socks(topology, implementation):  # type: ignore[no-untyped-def]
    server, data = str(topology.address("server", "proxy")), b"hello" * 1000
    start_tcp_echo(topology.server, server, 7)
    proxy = start_recording(topology.proxy, str(topology.address("proxy", "client")), 1080)
    implementation.start(topology.client, device="zt0", proxy_url=proxy.url)
    link = topology.iface("client", "proxy")
    with capture(topology.client, link, "tcp port 1080") as cap, topology.client.socket() as sock:
        sock.connect((server, 7))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        echoed = sock.makefile("rb").read()
    assert echoed == data
    assert_checksums_ok(cap.path)  # every IPv4/TCP checksum on the proxy link, recomputed
    sha = hashlib.sha256(data).hexdigest()
    assert_socks5_roundtrip(proxy, (server, 7), sha, sha)  # CONNECT seen, bytes match by hash
