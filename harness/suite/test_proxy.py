"""The proxy side: credentials, a proxy that cannot be reached or dies, IPv6 over an IPv4
proxy, and nothing of the app's traffic going around the proxy."""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
import urllib.parse

import pytest

from harness.assertions import assert_socks5_roundtrip
from harness.capture import capture
from harness.decode import DecodeError, decode_ip, packets_of
from harness.peers.starters import RecordingSocks5, start_dnsmasq
from harness.peers.targets import seeded_chunks
from harness.suite.path import (
    CLOSED_PROXY_PORT,
    DATA_PORT,
    ECHO_PORT,
    MIB,
    UDP_ECHO_PORT,
    Path,
    StartPath,
    Testbed,
    echo,
    expect_reset_or_refusal,
    udp_echo,
)
from harness.timescale import scaled
from ztun.tools import tool

pytestmark = [pytest.mark.conformance]

USER, PASSWORD = "certify", "s3cret pass"
"""RFC 1929 credentials (a space and a non-alphanumeric: the URL must quote them)."""
WITHIN_ONE_SECOND = 1.0
DEAD_PROXY_UPLOAD = 64 * MIB
"""Enough to still be sending when the proxy dies (it is killed after the first MiB)."""
DNS_NAME = "leak.conformance.test"


def _url(server: RecordingSocks5, user: str, password: str, port: int | None = None) -> str:
    quote = urllib.parse.quote
    host = f"[{server.address}]" if ":" in server.address else server.address
    return (
        f"socks5://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port or server.port}"
    )


@pytest.mark.timeout(60)
def test_proxy_credentials_accepted(start_path: StartPath, rng: random.Random) -> None:
    """With user and password in the proxy URL, the implementation authenticates (RFC 1929)
    and carries TCP and UDP: proxies that require credentials are the common case, and a
    client that cannot log in carries nothing."""
    path = start_path("recording", targets=["udp"], credentials=(USER, PASSWORD))
    assert isinstance(path.proxy, RecordingSocks5)
    payload, datagram = rng.randbytes(2000), rng.randbytes(200)
    assert echo(path, payload) == payload
    assert udp_echo(path, datagram)[0] == datagram
    logins = [e for e in path.proxy.events() if e.get("event") == "auth"]
    assert logins and all(e["ok"] and e["user"] == USER for e in logins), logins
    digest = hashlib.sha256(payload).hexdigest()
    request = assert_socks5_roundtrip(
        path.proxy, (path.server_v4, ECHO_PORT), digest, digest, command="CONNECT"
    )
    assert request.user == USER


@pytest.mark.timeout(60)
def test_proxy_refuses_credentials(start_path: StartPath) -> None:
    """A proxy that rejects the credentials: the app's connection is reset or refused within
    5 s, and nothing is relayed -- an app left hanging on an accepted connection, or told
    of a clean close, cannot tell the user that the proxy login is wrong."""
    path = start_path(
        "recording",
        credentials=(USER, PASSWORD),
        url=lambda server: _url(server, USER, "wrong"),
    )
    assert isinstance(path.proxy, RecordingSocks5)

    def attempt() -> bytes:
        with path.connect(ECHO_PORT) as sock:
            sock.sendall(b"let me in")
            return sock.recv(100)

    expect_reset_or_refusal(attempt, what="the proxy refused the credentials")
    attempts = [e for e in path.proxy.events() if e.get("event") == "auth"]
    assert attempts and not any(e["ok"] for e in attempts), attempts
    assert not path.proxy.requests(), "a request was relayed without a login"
    assert path.impl.alive()


@pytest.mark.timeout(60)
def test_proxy_unreachable(start_path: StartPath) -> None:
    """When nothing listens at the proxy's address, the app's connection is refused or reset
    within 1 s: an app waiting for a connect timeout instead hangs for minutes before it
    can report the broken proxy or fall back."""
    path = start_path(
        "recording", url=lambda server: f"socks5://{server.address}:{CLOSED_PROXY_PORT}"
    )

    def attempt() -> bytes:
        with path.connect(ECHO_PORT) as sock:
            sock.sendall(b"anyone?")
            return sock.recv(100)

    expect_reset_or_refusal(attempt, what="proxy port closed", within=WITHIN_ONE_SECOND)
    assert path.impl.alive()


@pytest.mark.timeout(90)
def test_proxy_dies_mid_transfer(start_path: StartPath, seed: int) -> None:
    """The proxy is killed (SIGKILL) during an upload: the app's connection is reset within
    1 s, not closed cleanly and not left hanging -- otherwise the app takes a cut transfer
    for a complete one, or waits forever on a connection that is gone."""
    path = start_path("recording", targets=["data"])
    assert isinstance(path.proxy, RecordingSocks5)
    sent = 0
    first_mib = threading.Event()
    outcome: dict[str, object] = {}
    with path.connect(DATA_PORT) as sock:

        def upload() -> None:
            nonlocal sent
            try:
                sock.sendall(b"SINK\n")
                for chunk in seeded_chunks(seed, DEAD_PROXY_UPLOAD):
                    sock.sendall(chunk)
                    sent += len(chunk)
                    if sent >= MIB:
                        first_mib.set()
                outcome["result"] = "the whole upload was accepted"
            except OSError as exc:
                outcome["error"] = exc
                outcome["at"] = time.monotonic()
            finally:
                first_mib.set()

        sender = threading.Thread(target=upload, name="dying-proxy-upload", daemon=True)
        sender.start()
        assert first_mib.wait(scaled(30.0)), "the upload did not start"
        path.proxy.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        sender.join(scaled(30.0))
        if "error" not in outcome:
            # The app's sends may all fit its buffers: its reads must then see the reset.
            outcome["read"] = expect_reset_or_refusal(
                lambda: sock.recv(100), what="proxy killed", within=WITHIN_ONE_SECOND
            )
            return
    error = outcome["error"]
    assert isinstance(error, ConnectionResetError | BrokenPipeError), (
        f"the app's upload failed with {error!r}, not a reset"
    )
    elapsed = float(outcome["at"]) - killed  # type: ignore[arg-type]
    assert elapsed < scaled(WITHIN_ONE_SECOND), f"the app learnt of it after {elapsed:.2f}s"


@pytest.mark.timeout(60)
def test_ipv6_over_ipv4_proxy(start_path: StartPath, rng: random.Random) -> None:
    """IPv6 app traffic (TCP and UDP) is carried through a proxy reached over IPv4, asking it
    for the IPv6 target (address type 4, RFC 1928 section 5): most proxies are reached over
    IPv4, and IPv6 apps must not lose connectivity because of it."""
    path = start_path("recording", targets=["udp"])
    assert isinstance(path.proxy, RecordingSocks5)
    assert ":" not in path.proxy.address, "the proxy must be reached over IPv4 here"
    payload, datagram = rng.randbytes(5000), rng.randbytes(300)
    assert echo(path, payload, v6=True) == payload
    assert udp_echo(path, datagram, v6=True)[0] == datagram
    digest, ddigest = hashlib.sha256(payload).hexdigest(), hashlib.sha256(datagram).hexdigest()
    connect = assert_socks5_roundtrip(
        path.proxy, (path.server_v6, ECHO_PORT), digest, digest, command="CONNECT"
    )
    assert connect.target_atyp == "ipv6", (
        f"CONNECT asked for {connect.target} as {connect.target_atyp}"
    )
    assert_socks5_roundtrip(
        path.proxy, (path.server_v6, UDP_ECHO_PORT), ddigest, ddigest, command="UDP ASSOCIATE"
    )


def _app_traffic(path: Path, rng: random.Random) -> None:
    for v6 in (False, True):
        payload = rng.randbytes(3000)
        assert echo(path, payload, v6=v6) == payload
        datagram = rng.randbytes(200)
        assert udp_echo(path, datagram, v6=v6)[0] == datagram
    with path.udp() as sock:
        from dnslib import DNSRecord

        sock.sendto(DNSRecord.question(DNS_NAME, "A").pack(), (path.server_v4, 53))
        sock.recvfrom(4096)
    path.client.run([tool("ping"), "-c", "2", "-i", "0.2", "-W", "1", path.server_v4], timeout=10.0)


@pytest.mark.pcap
@pytest.mark.timeout(90)
def test_no_leak_outside_the_proxy(
    start_path: StartPath, testbed: Testbed, rng: random.Random
) -> None:
    """While the app sends TCP, UDP, DNS and ping over IPv4 and IPv6, the client's uplink
    carries nothing but its traffic with the proxy (capture): anything else is the app's
    traffic leaking around the tunnel, exposing it to the network it was meant to avoid."""
    testbed.require_netns("the only other interface is loopback: there is no uplink to watch")
    path = start_path("recording", targets=["udp"])
    assert path.bed.uplink is not None
    start_dnsmasq(path.server, path.listen_ip(), {DNS_NAME: ["10.9.8.7"]})
    proxy = path.proxy.address
    # Neighbour discovery and ARP are the link's own business; anything IP is counted.
    with capture(path.client, path.bed.uplink, "ip or (ip6 and not icmp6)") as cap:
        _app_traffic(path, rng)
    leaks, carried = [], 0
    for frame, data in packets_of(cap.path):
        try:
            packet = decode_ip(data)
        except DecodeError:
            continue
        if proxy in (packet.src, packet.dst):
            carried += 1
        else:
            leaks.append(f"#{frame.index} {packet.summary()}")
    assert not leaks, f"packets on {path.bed.uplink} not to or from the proxy {proxy}:\n  " + (
        "\n  ".join(leaks[:20])
    )
    # The evidence is not vacuous: the same capture saw the traffic that went via the proxy.
    assert carried, f"nothing at all captured on {path.bed.uplink}: {cap.path}"
