"""TCP behaviours: open, bulk, half-close both ways, resets both ways, refusal, idle flows,
many at once, jumbo MTU, IPv6."""

from __future__ import annotations

import concurrent.futures
import hashlib
import random
import socket
import struct
import time

import pytest

from harness.capture import capture
from harness.peers.targets import seeded_bytes, seeded_sha256
from harness.suite.path import (
    CLOSED_PORT,
    DEVICE,
    ECHO_PORT,
    MIB,
    PROMPT,
    SCRIPTED_PORT,
    StartPath,
    download,
    echo,
    expect_reset_or_refusal,
    recv_all,
    scripted_server,
    upload,
)
from harness.timescale import scaled
from ztun.tools import tool

pytestmark = [pytest.mark.conformance]

BULK = 100 * MIB
IDLE = 90.0
JUMBO = 9000
JUMBO_TRANSFER = 16 * MIB
IPV6_BULK = 4 * MIB
HALF_CLOSE_REPLY = 1 * MIB
CONCURRENT = 200
CONCURRENT_WORKERS = 50
MAX_ECHO = 20_000


@pytest.mark.timeout(60)
def test_tcp_open(start_path: StartPath, rng: random.Random) -> None:
    """An app's TCP connect() through the TUN completes and carries bytes both ways: the
    one thing a tun2socks exists for; without it every TCP app on the host is cut off."""
    path = start_path("danted")
    payload = rng.randbytes(1000)
    assert echo(path, payload) == payload


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tcp_transfer_100mib_each_way(start_path: StartPath, rng: random.Random) -> None:
    """100 MiB up, then 100 MiB down, arrive byte-exact (sha256 at the far end): a lost,
    duplicated or reordered segment in a relay corrupts downloads and uploads silently."""
    path = start_path("danted", targets=["data"])
    seed = rng.randrange(1 << 31)
    assert upload(path, BULK, seed) == (BULK, seeded_sha256(seed, BULK)), "upload corrupted"
    assert download(path, BULK, seed + 1) == (BULK, seeded_sha256(seed + 1, BULK)), (
        "download corrupted"
    )


@pytest.mark.timeout(60)
def test_tcp_half_close(start_path: StartPath, rng: random.Random) -> None:
    """The app shuts down its write side; the server sees EOF and still sends 1 MiB back:
    RFC 793 half-close, which request/response protocols rely on (an implementation that
    closes both directions on the first FIN truncates every such reply).

    danted relays a half-close (microsocks ends the whole flow on the first EOF).
    """
    path = start_path("danted")
    request = rng.randbytes(10_000)
    seed = rng.randrange(1 << 31)
    seen: dict[str, object] = {}

    def serve(conn: socket.socket) -> None:
        seen["request"] = recv_all(conn)  # returns only at the client's FIN
        conn.sendall(seeded_bytes(seed, HALF_CLOSE_REPLY))

    with scripted_server(path.server, path.listen_ip(), SCRIPTED_PORT, serve) as server:
        with path.connect(SCRIPTED_PORT) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reply = recv_all(sock)
        server.join()
    assert seen["request"] == request, "the server did not get the request then EOF"
    assert len(reply) == HALF_CLOSE_REPLY, f"after the half-close the app got {len(reply)} B"
    assert hashlib.sha256(reply).hexdigest() == seeded_sha256(seed, HALF_CLOSE_REPLY)


@pytest.mark.timeout(60)
def test_tcp_rst_from_server(start_path: StartPath) -> None:
    """The server aborts (RST); the app's socket reports a reset promptly, not an EOF: an
    app that is told "clean end" instead of "aborted" takes a truncated transfer for a
    complete one.

    Uses the recording proxy: it answers a target's RST with an RST (danted closes with
    a FIN, which leaves a tun2socks nothing to propagate).
    """
    path = start_path("recording")

    def serve(conn: socket.socket) -> None:
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # linger 0: RST, not FIN

    with (
        capture(path.client, DEVICE, f"tcp port {SCRIPTED_PORT}"),  # evidence if it fails
        scripted_server(path.server, path.listen_ip(), SCRIPTED_PORT, serve) as server,
        path.connect(SCRIPTED_PORT) as sock,
    ):
        sock.sendall(b"please reset me")
        server.join()
        expect_reset_or_refusal(lambda: sock.recv(100), what="server sent RST")


@pytest.mark.timeout(60)
def test_tcp_rst_from_app(start_path: StartPath) -> None:
    """The app aborts its connection (RST): the server sees a reset promptly, not a clean
    EOF -- a server told "clean end" commits a half-received upload or request as if it
    were complete.

    Uses the recording proxy, which turns a reset on either side into a reset on the other
    (RFC 1928 does not say; danted closes with a FIN).
    """
    path = start_path("recording")
    seen: dict[str, object] = {}

    def serve(conn: socket.socket) -> None:
        seen["first"] = conn.recv(100)
        started = time.monotonic()
        try:
            seen["after"] = conn.recv(100)
        except ConnectionResetError:
            seen["reset_after"] = time.monotonic() - started

    with (
        capture(path.client, DEVICE, f"tcp port {SCRIPTED_PORT}"),
        scripted_server(path.server, path.listen_ip(), SCRIPTED_PORT, serve) as server,
    ):
        sock = path.connect(SCRIPTED_PORT)
        sock.sendall(b"about to abort")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # linger 0: RST, not FIN
        server.join()
    assert seen.get("first") == b"about to abort", f"the server got {seen.get('first')!r}"
    assert "after" not in seen, (
        f"the server saw {seen['after']!r} (a clean EOF or data), not a reset, after the app's RST"
    )
    assert float(seen["reset_after"]) < scaled(PROMPT)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_tcp_half_close_from_server(start_path: StartPath, rng: random.Random) -> None:
    """The server sends its answer and shuts down its write side; the app reads the answer,
    then EOF, and can still send: the server receives all of it. Half-close from the far end
    (RFC 793) is how servers say "done talking, still listening"; closing both directions
    on the server's FIN loses what the app sends after it."""
    path = start_path("danted")
    greeting, trailer = rng.randbytes(200_000), rng.randbytes(50_000)
    seen: dict[str, bytes] = {}

    def serve(conn: socket.socket) -> None:
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)
        seen["trailer"] = recv_all(conn)

    with (
        scripted_server(path.server, path.listen_ip(), SCRIPTED_PORT, serve) as server,
        path.connect(SCRIPTED_PORT) as sock,
    ):
        assert recv_all(sock) == greeting, "the app did not get the answer, then EOF"
        sock.sendall(trailer)
        sock.shutdown(socket.SHUT_WR)
        server.join()
    assert seen["trailer"] == trailer, (
        f"after the server's half-close it got {len(seen['trailer'])} B of {len(trailer)} B"
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_tcp_idle_90s(start_path: StartPath, rng: random.Random) -> None:
    """A TCP connection idle for 90 s still carries bytes both ways afterwards: ssh
    sessions, database pools and long polls idle for minutes, and an implementation that
    expires them silently breaks the app at its next write."""
    path = start_path("danted")
    with path.connect(ECHO_PORT) as sock:
        for round_ in ("before", "after"):
            payload = rng.randbytes(1000)
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = sock.recv(len(payload) - len(got))
                assert data, f"the connection ended {round_} the idle period"
                got += data
            assert got == payload, round_
            if round_ == "before":
                time.sleep(IDLE)  # noqa: sleep-ok - the idle period is what is tested


@pytest.mark.timeout(120)
def test_tcp_jumbo_mtu_9000(start_path: StartPath, rng: random.Random) -> None:
    """With the TUN at MTU 9000, 16 MiB pass each way byte-exact (sha256): jumbo MTUs are
    used on LANs and in containers, and an implementation with a fixed 1500-byte buffer
    truncates or drops every large segment."""
    path = start_path("danted", targets=["data"], mtu=JUMBO)
    link = path.client.run([tool("ip"), "-o", "link", "show", DEVICE], timeout=10.0, check=True)
    assert f"mtu {JUMBO} " in link.stdout, f"the implementation did not apply MTU: {link.stdout}"
    seed = rng.randrange(1 << 31)
    assert upload(path, JUMBO_TRANSFER, seed) == (
        JUMBO_TRANSFER,
        seeded_sha256(seed, JUMBO_TRANSFER),
    ), "upload corrupted"
    assert download(path, JUMBO_TRANSFER, seed) == (
        JUMBO_TRANSFER,
        seeded_sha256(seed, JUMBO_TRANSFER),
    ), "download corrupted"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_tcp_refused(start_path: StartPath, family: str) -> None:
    """Connecting to a closed port: the app sees a refusal or reset within 5 s, not an
    accepted connection that then hangs or closes cleanly (apps fall back or report an
    error on refusal; a fake accept makes them wait or misreport).

    The server's kernel answers RST, danted replies "connection refused" (5); an
    implementation that accepts locally first must then reset the app's connection.
    """
    path = start_path("danted")

    def attempt() -> bytes:
        with path.connect(CLOSED_PORT, v6=family == "v6") as sock:
            sock.sendall(b"anyone there?")
            return sock.recv(100)

    with capture(path.client, DEVICE, f"tcp port {CLOSED_PORT}"):
        expect_reset_or_refusal(attempt, what=f"connect to closed port {CLOSED_PORT}")
    assert path.impl.alive()


@pytest.mark.timeout(120)
def test_tcp_200_concurrent(start_path: StartPath, rng: random.Random) -> None:
    """200 connections open at once, each echoing its own payload intact: browsers open
    dozens at a time, and a relay that mixes up or stalls flows under load breaks pages."""
    path = start_path("danted")
    payloads = [rng.randbytes(rng.randrange(1, MAX_ECHO)) for _ in range(CONCURRENT)]
    socks: list[socket.socket] = []
    try:
        for _ in payloads:
            socks.append(path.connect(ECHO_PORT))

        def exchange(pair: tuple[socket.socket, bytes]) -> bytes:
            sock, payload = pair
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock)

        with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_WORKERS) as pool:
            answers = list(pool.map(exchange, zip(socks, payloads, strict=True)))
    finally:
        for sock in socks:
            sock.close()
    wrong = [i for i, (a, p) in enumerate(zip(answers, payloads, strict=True)) if a != p]
    assert not wrong, f"{len(wrong)} of {CONCURRENT} connections echoed wrong bytes: {wrong[:10]}"


@pytest.mark.timeout(90)
def test_ipv6_tcp(start_path: StartPath, rng: random.Random) -> None:
    """TCP to an IPv6 server carries 4 MiB each way byte-exact: IPv6 apps are otherwise
    cut off or silently fall back to IPv4."""
    path = start_path("danted", targets=["data"])
    seed = rng.randrange(1 << 31)
    assert upload(path, IPV6_BULK, seed, v6=True) == (IPV6_BULK, seeded_sha256(seed, IPV6_BULK))
    assert download(path, IPV6_BULK, seed, v6=True) == (IPV6_BULK, seeded_sha256(seed, IPV6_BULK))
