"""`ztun run --auto-route` end to end (issue 8): in a client namespace with a default
route of its own, everything goes through the proxy; a SIGKILL leaves routes behind that
`ztun cleanup` (or the next start) restores byte for byte; DNS goes where --dns says.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from harness.capture import capture
from harness.decode import packets_of
from harness.hosts import LogLine
from harness.peers.starters import (
    start_danted,
    start_dnsmasq,
    start_recording,
    start_tcp_echo,
    start_udp_echo,
)
from harness.skips import require_tool
from ztun.route import Journal
from ztun.route.model import SystemRoute
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

ZTUN = str(Path(sys.executable).with_name("ztun"))
ECHO, UDP_ECHO, SOCKS = 5002, 5003, 1080


def routing_state(host) -> str:  # type: ignore[no-untyped-def]
    """Everything auto-route may touch, as the kernel reports it."""
    parts = []
    for argv in (
        [tool("ip"), "-4", "rule", "show"],
        [tool("ip"), "-6", "rule", "show"],
        [tool("ip"), "-4", "route", "show", "table", "all"],
        [tool("ip"), "-6", "route", "show", "table", "all"],
    ):
        parts.append(host.run(argv, timeout=10, check=True).stdout)
    return "\n".join(parts)


@pytest.fixture
def path(topology, require_root):  # type: ignore[no-untyped-def]
    client, server = topology.client, topology.server
    proxy_addr = str(topology.address("proxy", "client", 4))
    server_addr = str(topology.address("server", "proxy", 4))
    start_tcp_echo(server, server_addr, ECHO)
    start_udp_echo(server, server_addr, UDP_ECHO)
    # The client's own default route points at the proxy host, which does not forward:
    # without ztun nothing reaches the server, so whatever does was carried by ztun.
    client.run([tool("ip"), "route", "add", "default", "via", proxy_addr], timeout=10, check=True)
    return topology, proxy_addr, server_addr


def start_ztun(topology, proxy_url: str, *extra: str):  # type: ignore[no-untyped-def]
    return topology.client.spawn(
        [ZTUN, "run", "--device", "tun://zt0", "--proxy", proxy_url, "--auto-route", *extra],
        name="ztun",
        ready=LogLine(r"ztun ready"),
    )


def crashed_run(topology, proxy_addr: str) -> str:  # type: ignore[no-untyped-def]
    """The routing state before a ztun with --auto-route that was then SIGKILLed (its
    rules and journal left behind)."""
    client = topology.client
    start_danted(topology.proxy, proxy_addr, SOCKS)
    before = routing_state(client)
    ztun = start_ztun(topology, f"socks5://{proxy_addr}:{SOCKS}")
    client.run([tool("kill"), "-9", str(ztun.pid)], timeout=5, check=True)
    ztun.wait(10)
    assert routing_state(client) != before, "a SIGKILLed ztun should have left its rules"
    return before


def echo(topology, server_addr: str, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
    sock = topology.client.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        sock.connect((server_addr, ECHO))
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload) and (data := sock.recv(65536)):
            received += data
    return received


def test_everything_goes_through_the_proxy_and_sigkill_is_recovered(path) -> None:  # type: ignore[no-untyped-def]
    topology, proxy_addr, server_addr = path
    client = topology.client
    start_danted(topology.proxy, proxy_addr, SOCKS)
    before = routing_state(client)
    link = topology.iface("client", "proxy")
    with capture(client, link, "ip") as cap:
        ztun = start_ztun(topology, f"socks5://{proxy_addr}:{SOCKS}")
        assert routing_state(client) != before, "auto-route changed nothing"
        assert echo(topology, server_addr, b"tcp through auto-route") == b"tcp through auto-route"
        udp = client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            udp.settimeout(5)
            udp.sendto(b"udp through auto-route", (server_addr, UDP_ECHO))
            assert udp.recvfrom(100)[0] == b"udp through auto-route"
        ping = client.run(
            [tool("ping"), "-c", "2", "-i", "0.2", "-W", "2", server_addr], timeout=15
        )
        assert ping.returncode == 0, ping.stdout
    # On the wire to the proxy host there is SOCKS5 to the proxy and nothing else: the
    # proxy's own connection did not loop into the TUN, and nothing went around it.
    peers = set()
    for _frame, ip in packets_of(cap.path):
        if ip and ip[0] >> 4 == 4:
            peers.add(socket.inet_ntoa(ip[16:20]))
    assert server_addr not in peers
    assert peers <= {proxy_addr, str(topology.address("client", "proxy", 4))}
    # A crash leaves the rules behind; `ztun cleanup` in that namespace puts it all back.
    client.run([tool("kill"), "-9", str(ztun.pid)], timeout=5, check=True)
    ztun.wait(10)
    left = routing_state(client)
    assert "lookup 2022" in left, "a SIGKILLed ztun should have left its rules"
    cleanup = client.run([ZTUN, "cleanup"], timeout=30)
    assert cleanup.returncode == 0, cleanup.stderr
    assert routing_state(client) == before


def test_cleanup_restores_what_it_can_when_a_journal_cannot_be(path) -> None:  # type: ignore[no-untyped-def]
    """A journal Linux cannot undo (here: a macOS route in this namespace's name, walked
    before the real one) is named, kept, and makes the exit status 1; the killed run's
    routes are restored all the same."""
    topology, proxy_addr, _server_addr = path
    client = topology.client
    before = crashed_run(topology, proxy_addr)
    inode = os.stat(f"/run/netns/{client.name}").st_ino
    foreign = Journal(Path(f"/run/ztun/aa-foreign_{inode}.journal"))
    try:
        # Begun by hand: Journal.begin would name this pytest (a "ztun" command line)
        # its live writer, and cleanup would rightly leave it alone.
        begin = {"op": "begin", "v": 1, "device": "utun7", "netns": None, "pid": 0}
        foreign.path.write_text(json.dumps(begin) + "\n")
        foreign.intent(0, SystemRoute(socket.AF_INET, "0.0.0.0/1", "utun7", 9))
        foreign.done(0)
        cleanup = client.run([ZTUN, "cleanup"], timeout=30)
        assert cleanup.returncode == 1, cleanup.stdout + cleanup.stderr
        assert f"cannot restore {foreign.path}: routes: " in cleanup.stdout
        assert "not a Linux change (another OS's journal)" in cleanup.stdout
        assert f"not restored (left for another try): {foreign.path}" in cleanup.stdout
        assert "restored routes from /run/ztun/zt0_" in cleanup.stdout
        assert routing_state(client) == before
        assert foreign.exists()
    finally:
        foreign.remove()


def test_next_start_recovers_and_sigterm_restores(path) -> None:  # type: ignore[no-untyped-def]
    topology, proxy_addr, server_addr = path
    client = topology.client
    before = crashed_run(topology, proxy_addr)
    second = start_ztun(topology, f"socks5://{proxy_addr}:{SOCKS}")
    assert "restored routes left by a previous run" in second.log_text()
    assert echo(topology, server_addr, b"after recovery") == b"after recovery"
    second.stop()
    assert routing_state(client) == before


@pytest.mark.parametrize(
    "extra",
    [(), ("--workers", "3"), ("--workers", "3", "--redirect")],
    ids=["1", "3", "3-redirect"],
)
def test_fake_ip_dns_sends_the_domain_to_the_proxy(path, tmp_path, extra) -> None:  # type: ignore[no-untyped-def]
    """With workers, queries and fake-IP flows are steered to worker 0 (the pool's owner),
    and with --redirect only worker 0 accepts redirected connections: every name, asked
    from its own source port, must come back as itself at the proxy."""
    from dnslib import DNSRecord

    if "--redirect" in extra:
        require_tool("nft")

    topology, proxy_addr, _server_addr = path
    client = topology.client
    recorder = start_recording(topology.proxy, proxy_addr, SOCKS)
    config = tmp_path / "ztun.toml"
    config.write_text(f'[dns]\nmode = "fake-ip"\nstate_file = "{tmp_path}/fakeip.json"\n')
    start_ztun(topology, recorder.url, "--config", str(config), *extra)
    names = [f"service{i}.example.test" for i in range(6)]
    for name in names:
        udp = client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            udp.settimeout(5)
            # Any resolver address: port 53 is answered by ztun from the fake pool.
            udp.sendto(DNSRecord.question(name, "A").pack(), ("192.0.2.53", 53))
            answer = DNSRecord.parse(udp.recvfrom(4096)[0])
        fake = str(answer.rr[0].rdata)
        assert fake.startswith(("198.18.", "198.19.")), fake
        sock = client.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(10)
            try:
                sock.connect((fake, 443))
                sock.sendall(b"x")
                sock.recv(10)
            except OSError:
                pass  # the proxy cannot resolve the name here; the request is what we check
        request = recorder.wait_for_request(
            lambda r, name=name: r.command == "CONNECT" and r.target_host == name, timeout=10
        )
        assert (request.target_host, request.target_port) == (name, 443)


def test_fake_ip_answers_no_aaaa_when_the_tun_has_no_ipv6(path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With an IPv4-only TUN a fake IPv6 address (fc00::/18) would be routed around the
    tunnel, or nowhere: AAAA gets NOERROR without data, A its fake address as before."""
    from dnslib import QTYPE, RCODE, DNSRecord

    topology, proxy_addr, _server_addr = path
    start_danted(topology.proxy, proxy_addr, SOCKS)
    config = tmp_path / "ztun.toml"
    config.write_text(f'[dns]\nmode = "fake-ip"\nstate_file = "{tmp_path}/fakeip.json"\n')
    proxy_url = f"socks5://{proxy_addr}:{SOCKS}"
    start_ztun(topology, proxy_url, "--config", str(config), "--address", "172.19.0.1/30")
    answers = {}
    for qtype in ("A", "AAAA"):
        udp = topology.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            udp.settimeout(5)
            udp.sendto(DNSRecord.question("v4only.example.test", qtype).pack(), ("192.0.2.53", 53))
            answers[qtype] = DNSRecord.parse(udp.recvfrom(4096)[0])
    assert [QTYPE[rr.rtype] for rr in answers["A"].rr] == ["A"]
    assert str(answers["A"].rr[0].rdata).startswith(("198.18.", "198.19."))
    assert answers["AAAA"].header.rcode == RCODE.NOERROR and answers["AAAA"].rr == []


def test_fake_ip_answers_dns_over_tcp_from_the_pool(path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An app's DNS over TCP to port 53 (its retry after TC=1, or its choice) went through
    the proxy to the resolver it named and got the real address (dnsmasq's 10.9.9.x here)
    while its UDP queries got fake ones. Now ztun answers it from the pool as it answers
    UDP: two queries sent in one write on one connection, each answered (RFC 7766
    framing), the same fake address as over UDP, and nothing to port 53 at the proxy."""
    from dnslib import DNSRecord

    topology, proxy_addr, server_addr = path
    start_dnsmasq(
        topology.server, server_addr, {"tcp.ztun.test": "10.9.9.9", "udp.ztun.test": "10.9.9.8"}
    )
    recorder = start_recording(topology.proxy, proxy_addr, SOCKS)
    config = tmp_path / "ztun.toml"
    config.write_text(f'[dns]\nmode = "fake-ip"\nstate_file = "{tmp_path}/fakeip.json"\n')
    start_ztun(topology, recorder.url, "--config", str(config))
    udp = topology.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.settimeout(10)
        udp.sendto(DNSRecord.question("udp.ztun.test", "A").pack(), (server_addr, 53))
        over_udp = str(DNSRecord.parse(udp.recvfrom(4096)[0]).rr[0].rdata)
    queries = [DNSRecord.question(name, "A") for name in ("tcp.ztun.test", "udp.ztun.test")]
    for ident, query in enumerate(queries, 1):
        query.header.id = ident
    tcp = topology.client.socket(socket.AF_INET, socket.SOCK_STREAM)
    with tcp:
        tcp.settimeout(10)
        tcp.connect((server_addr, 53))
        wire = [bytes(query.pack()) for query in queries]
        tcp.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in wire))  # RFC 7766 8
        reader = tcp.makefile("rb")
        answers = {}
        for _ in queries:
            answer = DNSRecord.parse(reader.read(int.from_bytes(reader.read(2), "big")))
            answers[answer.header.id] = [str(rr.rdata) for rr in answer.rr]
    (over_tcp,) = answers[1]
    assert over_tcp.startswith(("198.18.", "198.19.")), answers
    assert over_udp.startswith(("198.18.", "198.19.")) and answers[2] == [over_udp]
    assert not [r for r in recorder.requests() if r.target_port == 53]


def test_remote_dns_goes_to_the_upstream_through_the_proxy(path) -> None:  # type: ignore[no-untyped-def]
    from dnslib import DNSRecord

    topology, proxy_addr, server_addr = path
    start_dnsmasq(topology.server, server_addr, {"remote.ztun.test": "10.9.9.9"})
    recorder = start_recording(topology.proxy, proxy_addr, SOCKS)
    start_ztun(topology, recorder.url, "--dns", "remote", "--dns-upstream", f"{server_addr}:53")
    udp = topology.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.settimeout(10)
        udp.sendto(DNSRecord.question("remote.ztun.test", "A").pack(), ("192.0.2.53", 53))
        answer = DNSRecord.parse(udp.recvfrom(4096)[0])
    assert [str(rr.rdata) for rr in answer.rr] == ["10.9.9.9"]
    request = recorder.wait_for_request(lambda r: r.target_port == 53, timeout=10)
    assert request.command == "CONNECT" and request.target_host == server_addr


def test_remote_dns_truncated_answer_is_retried_over_tcp_to_the_upstream(path) -> None:  # type: ignore[no-untyped-def]
    """An answer too large for 512 bytes comes back TC=1; the client's retry over TCP to
    the address it asked (any: 192.0.2.53 answers nothing) must reach the upstream too."""
    from dnslib import DNSRecord

    topology, proxy_addr, server_addr = path
    many = [f"10.9.{i // 100}.{i % 100 + 1}" for i in range(60)]  # 60 A records: > 512 bytes
    start_dnsmasq(topology.server, server_addr, {"big.ztun.test": many})
    recorder = start_recording(topology.proxy, proxy_addr, SOCKS)
    start_ztun(topology, recorder.url, "--dns", "remote", "--dns-upstream", f"{server_addr}:53")
    query = DNSRecord.question("big.ztun.test", "A").pack()
    udp = topology.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.settimeout(10)
        udp.sendto(query, ("192.0.2.53", 53))
        truncated = DNSRecord.parse(udp.recvfrom(4096)[0])
    assert truncated.header.tc == 1 and not truncated.rr
    tcp = topology.client.socket(socket.AF_INET, socket.SOCK_STREAM)
    with tcp:
        tcp.settimeout(10)
        tcp.connect(("192.0.2.53", 53))
        tcp.sendall(len(query).to_bytes(2, "big") + query)  # RFC 7766 8: length-prefixed
        reader = tcp.makefile("rb")
        answer = DNSRecord.parse(reader.read(int.from_bytes(reader.read(2), "big")))
    assert sorted(str(rr.rdata) for rr in answer.rr) == sorted(many)
    connects = [r for r in recorder.requests() if r.target_port == 53]
    assert {(r.command, r.target_host) for r in connects} == {("CONNECT", server_addr)}


def test_strict_route_blocks_ipv6_when_only_ipv4_is_proxied(path) -> None:  # type: ignore[no-untyped-def]
    topology, proxy_addr, server_addr = path
    client = topology.client
    proxy6 = str(topology.address("proxy", "client", 6))
    server6 = str(topology.address("server", "proxy", 6))
    client.run([tool("ip"), "-6", "route", "add", "default", "via", proxy6], timeout=10, check=True)
    start_danted(topology.proxy, proxy_addr, SOCKS)
    link = topology.iface("client", "proxy")
    with capture(client, link, "ip6 and (tcp or udp)") as cap:
        start_ztun(
            topology,
            f"socks5://{proxy_addr}:{SOCKS}",
            "--address",
            "172.19.0.1/30",
            "--strict-route",
        )
        sock = client.socket(socket.AF_INET6, socket.SOCK_STREAM)
        with sock, pytest.raises(OSError):
            sock.settimeout(5)
            sock.connect((server6, ECHO))
        udp = client.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with udp, pytest.raises(OSError):
            udp.sendto(b"must not leak", (server6, UDP_ECHO))
        assert echo(topology, server_addr, b"v4 still flows") == b"v4 still flows"
    assert cap.packet_count() == 0, "IPv6 leaked around the TUN under --strict-route"


def nft_tables(host) -> str:  # type: ignore[no-untyped-def]
    return host.run([tool("nft"), "list", "tables"], timeout=10, check=True).stdout


def test_redirect_fast_path_carries_tcp_without_the_tun(path) -> None:  # type: ignore[no-untyped-def]
    require_tool("nft")
    topology, proxy_addr, server_addr = path
    client = topology.client
    start_danted(topology.proxy, proxy_addr, SOCKS)
    ztun = start_ztun(topology, f"socks5://{proxy_addr}:{SOCKS}", "--redirect")
    assert "ztun_zt0" in nft_tables(client)
    payload = os.urandom(256 * 1024)
    assert echo(topology, server_addr, payload) == payload
    ztun.stop()
    assert '"tcp_flows_redirected": 1' in ztun.log_text()
    assert "ztun_zt0" not in nft_tables(client), "the redirect table must go with ztun"
    crashed = start_ztun(topology, f"socks5://{proxy_addr}:{SOCKS}", "--redirect")
    client.run([tool("kill"), "-9", str(crashed.pid)], timeout=5, check=True)
    crashed.wait(10)
    assert "ztun_zt0" in nft_tables(client)
    assert client.run([ZTUN, "cleanup"], timeout=30).returncode == 0
    assert "ztun_zt0" not in nft_tables(client)


def test_dns_hijack_answers_via_tcp_through_the_proxy_and_nothing_leaks(path) -> None:  # type: ignore[no-untyped-def]
    from dnslib import DNSRecord

    topology, proxy_addr, server_addr = path
    client = topology.client
    start_dnsmasq(topology.server, server_addr, {"hijack.ztun.test": "10.9.9.8"})
    recorder = start_recording(topology.proxy, proxy_addr, SOCKS)
    link = topology.iface("client", "proxy")
    with capture(client, link, "udp port 53") as cap:
        start_ztun(topology, recorder.url, "--dns", "hijack")
        udp = client.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            udp.settimeout(10)
            udp.sendto(DNSRecord.question("hijack.ztun.test", "A").pack(), (server_addr, 53))
            answer = DNSRecord.parse(udp.recvfrom(4096)[0])
    assert [str(rr.rdata) for rr in answer.rr] == ["10.9.9.8"]
    # Hijacked: the query went to the address the app asked, as DNS over TCP through the
    # proxy (a CONNECT to server:53), and no DNS datagram crossed the client's link.
    request = recorder.wait_for_request(lambda r: r.target_port == 53, timeout=10)
    assert request.command == "CONNECT" and request.target_host == server_addr
    assert cap.packet_count() == 0, "a DNS datagram left the client around the tunnel"
