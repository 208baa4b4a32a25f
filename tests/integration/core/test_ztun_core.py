"""ztun end to end in namespaces: real TUN, real kernel, real SOCKS5 servers (issue 3).

Every test builds its own client/proxy/server namespaces (removed also on failure);
traffic is sent only inside them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import socket
import time

import pytest
from ztun_path import DATA_PORT, DEVICE, ECHO_PORT, SOCKS_PORT, UDP_ECHO_PORT, StartPath

from harness.hosts import LogLine
from harness.impls.ztun import default_binary
from harness.peers.starters import start_danted, start_dnsmasq
from harness.peers.targets import seeded_sha256, sink_upload, source_download
from ztun.tools import tool

pytestmark = [pytest.mark.netns, pytest.mark.linux]

MIB = 1 << 20


def upload(path, size: int, seed: int, *, v6: bool = False) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """SINK: send `size` seeded bytes, half-close, read the server's count and hash."""
    with path.connect(DATA_PORT, v6=v6, timeout=60) as sock:
        return sink_upload(sock, size, seed)


def download(path, size: int, seed: int, *, v6: bool = False) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with path.connect(DATA_PORT, v6=v6, timeout=60) as sock:
        return source_download(sock, size, seed)


def echo_half_closed(sock: socket.socket, payload: bytes) -> bytes:
    """Send on an open echo connection, half-close, read everything back, close."""
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def echo_once(path, payload: bytes, *, v6: bool = False) -> bytes:  # type: ignore[no-untyped-def]
    """Send, then read as many bytes back (no half-close: microsocks ends a flow on it)."""
    received = b""
    with path.connect(ECHO_PORT, v6=v6) as sock:
        sock.sendall(payload)
        while len(received) < len(payload):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return received


@pytest.mark.slow
def test_100_mib_each_way_arrives_byte_exact(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    seed = rng.randrange(1 << 31)
    assert upload(path, 100 * MIB, seed) == (100 * MIB, seeded_sha256(seed, 100 * MIB))
    assert download(path, 100 * MIB, seed + 1) == (100 * MIB, seeded_sha256(seed + 1, 100 * MIB))


def test_ipv6_tcp_both_directions(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    seed = rng.randrange(1 << 31)
    assert upload(path, 4 * MIB, seed, v6=True) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    assert download(path, 4 * MIB, seed, v6=True) == (4 * MIB, seeded_sha256(seed, 4 * MIB))


def test_200_concurrent_connections(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    payloads = [rng.randbytes(rng.randrange(1, 20000)) for _ in range(200)]
    socks = [path.connect(ECHO_PORT, timeout=30) for _ in payloads]  # all open at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(echo_half_closed, socks, payloads))
    assert answers == payloads


def test_socks5_username_password_auth(start_path: StartPath) -> None:
    path = start_path("microsocks", user="alice", password="s3cret")
    assert path.proxy.url.startswith("socks5://alice:s3cret@")
    assert echo_once(path, b"authenticated hello") == b"authenticated hello"


def test_wrong_credentials_reset_the_app_and_are_logged(start_path: StartPath, servers) -> None:  # type: ignore[no-untyped-def]
    proxy_addr = str(servers.address("proxy", "client", 4))
    path = start_path(
        "microsocks",
        user="alice",
        password="s3cret",
        url=f"socks5://alice:wrong@{proxy_addr}:{SOCKS_PORT}",
    )
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        echo_once(path, b"should not pass")
    # ztun logs before it resets, but its log reaches the file through the harness's
    # reader thread: await the line rather than race it.
    path.ztun.process.wait_for(LogLine(r"rejected username 'alice'"), timeout=10)
    assert path.ztun.alive()


def test_udp_echo_via_udp_associate_v4_and_v6(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    for v6, server in ((False, path.server_v4), (True, path.server_v6)):
        with path.udp(v6=v6) as sock:
            for _ in range(5):
                payload = rng.randbytes(rng.randrange(1, 1200))
                sock.sendto(payload, (server, UDP_ECHO_PORT))
                data, source = sock.recvfrom(65535)
                assert data == payload
                assert source[:2] == (server, UDP_ECHO_PORT)


def test_dns_query_through_udp_associate(start_path: StartPath) -> None:
    from dnslib import DNSRecord

    path = start_path("danted")
    start_dnsmasq(path.topo.server, path.server_v4, {"probe.ztun.test": "10.9.8.7"})
    query = DNSRecord.question("probe.ztun.test", "A")
    with path.udp() as sock:
        sock.sendto(query.pack(), (path.server_v4, 53))
        answer = DNSRecord.parse(sock.recvfrom(4096)[0])
    assert [str(rr.rdata) for rr in answer.rr] == ["10.9.8.7"]
    assert answer.header.id == query.header.id


def test_ping_through_the_tun(start_path: StartPath) -> None:
    path = start_path("danted")
    for target in (path.server_v4, path.server_v6):
        result = path.topo.client.run(
            [tool("ping"), "-c", "3", "-i", "0.2", "-W", "2", target], timeout=20
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0% packet loss" in result.stdout


def test_proxy_down_resets_promptly_then_recovers(start_path: StartPath) -> None:
    path = start_path("danted")
    assert echo_once(path, b"before") == b"before"
    path.proxy.stop()
    started = time.monotonic()
    with pytest.raises((ConnectionResetError, BrokenPipeError, ConnectionRefusedError)):
        echo_once(path, b"while down")
    assert time.monotonic() - started < 5, "the app must get its RST promptly, not a timeout"
    assert path.ztun.alive()
    proxy_addr = str(path.topo.address("proxy", "client", 4))
    start_danted(path.topo.proxy, proxy_addr, SOCKS_PORT)
    assert echo_once(path, b"after recovery") == b"after recovery"


def test_dead_proxy_leaves_other_flows_running(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    """A flow open before the proxy goes away keeps its bytes; new ones are refused."""
    path = start_path("danted")
    with path.connect(ECHO_PORT) as long_lived:
        long_lived.sendall(b"ping-1")
        assert long_lived.recv(100) == b"ping-1"
        # danted forks a child per connection: killing only the listener keeps this flow.
        path.topo.proxy.run([tool("kill"), str(path.proxy.process.pid)], timeout=5)
        path.proxy.process.wait(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError, ConnectionRefusedError)):
            echo_once(path, b"new flow")
        long_lived.sendall(b"ping-2")
        assert long_lived.recv(100) == b"ping-2"


def _tun_sender(path):  # type: ignore[no-untyped-def]
    """An AF_PACKET socket on the TUN: what it sends is read by ztun as if an app sent it."""
    sock = path.topo.client.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sock.bind((DEVICE, 0x0800))
    return sock


def test_malformed_packets_are_counted_and_do_not_stop_traffic(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted")
    garbage = [
        b"",
        b"\x45",
        b"\x45\x00\x00\x14" + b"\x00" * 4,  # header says 20 bytes, only 8 present
        b"\x4f" + bytes(19),  # IHL 15 but 20 bytes
        b"\x60" + bytes(10),  # truncated IPv6
        b"\x45\x00\x00\x1c" + bytes(5) + b"\x06" + bytes(10) + b"\x01\x02\x03\x04\x05\x06\x07\x08",
        rng.randbytes(40),
        rng.randbytes(1400),
    ]
    sender = _tun_sender(path)
    with sender:
        for _ in range(50):
            for packet in garbage:
                # The kernel refuses some (empty ones); that is not ztun's doing.
                with contextlib.suppress(OSError):
                    sender.sendto(packet, (DEVICE, 0x0800))
    assert echo_once(path, b"still alive") == b"still alive"
    assert path.ztun.alive()
    # SIGTERM makes ztun log its counters; the drops must be there, by reason.
    path.ztun.stop()
    log = path.ztun.log_text()
    assert "malformed_" in log, log[-2000:]


def test_sigterm_removes_the_device(start_path: StartPath) -> None:
    path = start_path("danted")
    assert path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).returncode == 0
    path.ztun.stop()
    assert "ztun stopped" in path.ztun.log_text()
    assert path.topo.client.run([tool("ip"), "link", "show", DEVICE], timeout=5).returncode != 0


def test_tun_thread_mode_carries_tcp_udp_and_icmp(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    """--tun-thread: the same pump batches in a thread of their own (not the default)."""
    path = start_path("danted", extra=("--tun-thread",))
    seed = rng.randrange(1 << 31)
    assert download(path, 4 * MIB, seed) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    with path.udp() as sock:
        payload = rng.randbytes(700)
        sock.sendto(payload, (path.server_v4, UDP_ECHO_PORT))
        assert sock.recvfrom(65535)[0] == payload
    result = path.topo.client.run(
        [tool("ping"), "-c", "2", "-i", "0.2", "-W", "2", path.server_v4], timeout=20
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The pump thread is there (the default pumps on the loop's own thread).
    assert len(os.listdir(f"/proc/{path.ztun.process.pid}/task")) >= 2


DEFAULT_ACCELERATIONS = (
    "accelerations: splice=on vnet_hdr=on multi_queue=off udp_gso=on redirect=off "
    "kernel_nat=on tun_reader=loop"
)
PORTABLE_ACCELERATIONS = (
    "accelerations: splice=off vnet_hdr=off multi_queue=off udp_gso=off redirect=off "
    "kernel_nat=off tun_reader=thread"
)


# The default Linux profile (kernel NAT, splice, ...): .ci/run also runs this module with
# ZTUN_EXTRA_ARGS=--portable, where these accelerations are off by design.
default_profile_only = pytest.mark.skipif(
    bool(os.environ.get("ZTUN_EXTRA_ARGS")), reason="ZTUN_EXTRA_ARGS replaces the default profile"
)


@default_profile_only
def test_the_default_profile_logs_every_linux_acceleration_on(start_path: StartPath) -> None:
    path = start_path("danted")
    assert DEFAULT_ACCELERATIONS in path.ztun.log_text()


STOPPED_STATS = re.compile(r"ztun stopped stats=(\{.*\})")


def _stopped_stats(path) -> dict:  # type: ignore[no-untyped-def]
    path.ztun.stop()
    found = STOPPED_STATS.findall(path.ztun.log_text())
    assert found, "no stats line at stop"
    return json.loads(found[-1])  # type: ignore[no-any-return]


@default_profile_only
def test_the_kernel_nat_carries_tcp_after_the_syn(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    """By default an eBPF program on the TUN's egress rewrites every TCP segment after
    the SYN: megabytes both ways and both families, byte exact, while ztun reads a
    handful of frames; its counters hold what the kernel carried."""
    path = start_path("danted")
    seed = rng.randrange(1 << 31)
    for v6 in (False, True):
        assert upload(path, 4 * MIB, seed, v6=v6) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
        assert download(path, 4 * MIB, seed, v6=v6) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    stats = _stopped_stats(path)
    kernel = stats["kernel_nat"]
    assert kernel["installed"] == 4 and kernel.get("install_failed", 0) == 0
    assert kernel["bytes_up"] >= 8 * MIB and kernel["bytes_down"] >= 8 * MIB
    # SYNs and the odd IPv6 neighbour/MLD frame; the stack rewrote no data segment.
    assert stats["tun_frames_in"] < 40, stats


def test_no_kernel_nat_leaves_every_segment_to_the_stack(start_path: StartPath, rng) -> None:  # type: ignore[no-untyped-def]
    path = start_path("danted", extra=("--no-kernel-nat",))
    assert "kernel_nat=off" in path.ztun.log_text()
    seed = rng.randrange(1 << 31)
    assert download(path, 4 * MIB, seed, v6=True) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    stats = _stopped_stats(path)
    assert "kernel_nat" not in stats
    assert stats["tun_frames_in"] > 40, stats


@default_profile_only
def test_without_cap_bpf_the_stack_carries_tcp(start_path: StartPath, rng, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ztun started without CAP_BPF (and CAP_SYS_ADMIN, which would stand in for it): the
    kernel NAT cannot be loaded, start-up says so and why, and TCP works as before."""
    launcher = tmp_path / "ztun-without-bpf"
    drop = "-bpf,-sys_admin,-perfmon"
    launcher.write_text(
        f'#!/bin/sh\nexec {tool("setpriv")} --bounding-set {drop} -- {default_binary()} "$@"\n'
    )
    launcher.chmod(0o755)
    path = start_path("danted", binary=str(launcher))
    log = path.ztun.log_text()
    assert "kernel_nat=off" in log
    assert "kernel NAT unavailable, TCP is rewritten by ztun's stack" in log
    assert "Operation not permitted" in log
    seed = rng.randrange(1 << 31)
    assert upload(path, 2 * MIB, seed) == (2 * MIB, seeded_sha256(seed, 2 * MIB))
    assert download(path, 2 * MIB, seed, v6=True) == (2 * MIB, seeded_sha256(seed, 2 * MIB))


def test_portable_profile_carries_tcp_udp_and_icmp_with_every_acceleration_off(
    start_path: StartPath,
    rng,  # type: ignore[no-untyped-def]
) -> None:
    """--portable: what macOS and Windows get (copy relay, plain packet reads, no GSO,
    the reader thread), both ways and both families."""
    path = start_path("danted", extra=("--portable",))
    assert PORTABLE_ACCELERATIONS in path.ztun.log_text()
    seed = rng.randrange(1 << 31)
    assert download(path, 4 * MIB, seed) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    assert upload(path, 4 * MIB, seed, v6=True) == (4 * MIB, seeded_sha256(seed, 4 * MIB))
    for v6 in (False, True):
        with path.udp(v6=v6) as sock:
            payload = rng.randbytes(1200)
            sock.sendto(payload, (path.server_v6 if v6 else path.server_v4, UDP_ECHO_PORT))
            assert sock.recvfrom(65535)[0] == payload
    for server in (path.server_v4, path.server_v6):
        result = path.topo.client.run(
            [tool("ping"), "-c", "2", "-i", "0.2", "-W", "2", server], timeout=20
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # No pipe beyond stdio (the default keeps splice's pool of them after a transfer).
    fd_dir = f"/proc/{path.ztun.process.pid}/fd"
    links = {int(fd): os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)}
    assert not [fd for fd, link in links.items() if fd > 2 and link.startswith("pipe:")], links
