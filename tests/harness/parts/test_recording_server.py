"""The recording SOCKS5 server against a simple client, on 127.0.0.1 (no root)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.assertions import assert_socks5_roundtrip
from harness.peers.recording import AddressMap, ProxyFaults, RecordingServer
from harness.peers.socks5_client import (
    Socks5ClientError,
    connect,
    handshake,
    udp_associate,
)
from harness.peers.socks5_wire import Address, AddrType, Command, Reply
from harness.peers.targets import seeded_bytes, seeded_sha256

Targets = Any  # the `targets` fixture of conftest.py (tcp_echo, tcp_data, udp_echo)

CLIENT_TIMEOUT = 5.0


def _echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send everything, half-close, read until the echo's own half-close."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def _proxy(server: RecordingServer) -> tuple[str, int]:
    return server.host, server.port


def test_connect_ipv4_roundtrip_is_logged_with_hashes(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy()
    payload = seeded_bytes(1, 300_000)
    with connect(_proxy(server), targets.tcp_echo, timeout=CLIENT_TIMEOUT) as sock:
        echoed = _echo_roundtrip(sock, payload)
    assert echoed == payload
    digest = hashlib.sha256(payload).hexdigest()
    request = assert_socks5_roundtrip(server, targets.tcp_echo, digest, digest, command="CONNECT")
    assert request.target_atyp == "ipv4"
    assert request.bytes_to_target == request.bytes_from_target == len(payload)
    assert request.end == "eof"
    assert request.user is None
    assert request.bound is not None and request.bound.startswith("127.0.0.1:")


def test_connect_by_domain_keeps_the_domain_in_the_log(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy()
    try:
        socket.getaddrinfo("localhost", targets.tcp_echo[1], socket.AF_INET)
    except OSError:
        pytest.skip("localhost does not resolve here")
    with connect(
        _proxy(server), ("localhost", targets.tcp_echo[1]), timeout=CLIENT_TIMEOUT
    ) as sock:
        assert _echo_roundtrip(sock, b"by name") == b"by name"
    digest = hashlib.sha256(b"by name").hexdigest()
    request = assert_socks5_roundtrip(server, f"localhost:{targets.tcp_echo[1]}", digest, digest)
    assert request.target_atyp == "domain"


def test_connect_ipv6(make_proxy: Any, loop_thread: Any) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    from harness.peers.targets import serve_tcp_echo

    echo = loop_thread.run(serve_tcp_echo("::1", 0))
    port = echo.sockets[0].getsockname()[1]
    server = make_proxy(host="::1")
    with connect(("::1", server.port), ("::1", port), timeout=CLIENT_TIMEOUT) as sock:
        assert _echo_roundtrip(sock, b"six") == b"six"
    digest = hashlib.sha256(b"six").hexdigest()
    request = assert_socks5_roundtrip(server, f"[::1]:{port}", digest, digest)
    assert request.target_atyp == "ipv6"
    assert request.target == f"[::1]:{port}"
    assert request.client.startswith("[::1]:")

    async def close() -> None:
        echo.close()

    loop_thread.run(close())


def test_connect_refused_by_target_is_reply_5(make_proxy: Any) -> None:
    server = make_proxy()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(Socks5ClientError) as info:
        connect(_proxy(server), ("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    assert info.value.reply == Reply.CONNECTION_REFUSED
    (request,) = server.requests()
    assert request.reply == Reply.CONNECTION_REFUSED
    assert request.reply_name == "connection refused"
    assert request.closed


def test_auth_success_logs_the_user(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(username="alice", password="s3cret")
    with connect(
        _proxy(server),
        targets.tcp_echo,
        username="alice",
        password="s3cret",
        timeout=CLIENT_TIMEOUT,
    ) as sock:
        assert _echo_roundtrip(sock, b"hi") == b"hi"
    request = assert_socks5_roundtrip(server, targets.tcp_echo, None, None)
    assert request.user == "alice"
    auth = [e for e in server.log.events if e["event"] == "auth"]
    assert auth and auth[0]["ok"] is True


def test_auth_wrong_password_is_rejected_and_logged(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(username="alice", password="s3cret")
    with pytest.raises(Socks5ClientError, match="authentication failed"):
        connect(
            _proxy(server),
            targets.tcp_echo,
            username="alice",
            password="nope",
            timeout=CLIENT_TIMEOUT,
        )
    assert server.requests() == []
    _wait_event(server, "auth")
    (auth,) = [e for e in server.log.events if e["event"] == "auth"]
    assert auth["user"] == "alice" and auth["ok"] is False


def test_client_without_credentials_gets_no_acceptable_method(
    make_proxy: Any, targets: Targets
) -> None:
    server = make_proxy(username="alice", password="s3cret")
    with pytest.raises(Socks5ClientError, match="none of the offered methods"):
        connect(_proxy(server), targets.tcp_echo, timeout=CLIENT_TIMEOUT)
    _wait_event(server, "greeting")
    (greeting,) = [e for e in server.log.events if e["event"] == "greeting"]
    assert greeting["methods"] == [0] and greeting["chosen"] == 0xFF


def test_bind_is_not_supported(make_proxy: Any) -> None:
    server = make_proxy()
    with (
        socket.create_connection(_proxy(server), timeout=CLIENT_TIMEOUT) as sock,
        pytest.raises(Socks5ClientError) as info,
    ):
        handshake(sock, Command.BIND, Address("127.0.0.1", 9, AddrType.IPV4))
    assert info.value.reply == Reply.COMMAND_NOT_SUPPORTED
    (request,) = server.requests()
    assert request.command == "BIND"


def test_udp_associate_roundtrip(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy()
    payloads = [b"first datagram", b"second", bytes(range(256))]
    session = udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
    try:
        replies = []
        for payload in payloads:
            session.send(targets.udp_echo, payload)
            source, data = session.recv()
            assert (source.host, source.port) == targets.udp_echo
            replies.append(data)
    finally:
        session.close()
    assert replies == payloads
    digest = hashlib.sha256(b"".join(payloads)).hexdigest()
    request = assert_socks5_roundtrip(
        server, targets.udp_echo, digest, digest, command="UDP ASSOCIATE"
    )
    stats = request.udp[f"127.0.0.1:{targets.udp_echo[1]}"]
    assert stats.datagrams_to_target == stats.datagrams_from_target == len(payloads)
    assert stats.bytes_to_target == sum(map(len, payloads))


def test_udp_from_a_foreign_address_is_dropped(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy()
    session = udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
    try:
        # Same host, but 127.0.0.2 is not the address of the control connection.
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.2", 0))
        from harness.peers.socks5_wire import encode_udp_datagram

        stranger.sendto(
            encode_udp_datagram(Address.from_host(*targets.udp_echo), b"x"), session.relay
        )
        stranger.close()
        _wait_event(server, "udp_drop")
    finally:
        session.close()
    drop = next(e for e in server.log.events if e["event"] == "udp_drop")
    assert drop["reason"] == "foreign source"


# --------------------------------------------------------------------------- faults


def test_fault_refuse(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(faults=["refuse"])
    with pytest.raises(Socks5ClientError) as info:
        connect(_proxy(server), targets.tcp_echo, timeout=CLIENT_TIMEOUT)
    assert info.value.reply == Reply.CONNECTION_REFUSED
    with pytest.raises(Socks5ClientError):
        udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
    assert [r.reply for r in server.requests()] == [5, 5]


def test_fault_refuse_with_code(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(faults=["refuse:2"])
    with pytest.raises(Socks5ClientError) as info:
        connect(_proxy(server), targets.tcp_echo, timeout=CLIENT_TIMEOUT)
    assert info.value.reply == Reply.NOT_ALLOWED


def test_fault_delay(make_proxy: Any, targets: Targets) -> None:
    delay_ms = 300
    server = make_proxy(faults=[f"delay:{delay_ms}"])
    started = time.monotonic()
    with connect(_proxy(server), targets.tcp_echo, timeout=CLIENT_TIMEOUT) as sock:
        elapsed = time.monotonic() - started
        assert _echo_roundtrip(sock, b"late") == b"late"
    assert elapsed >= delay_ms / 1000


def test_fault_drop_after_lets_exactly_n_bytes_through_then_resets(
    make_proxy: Any, targets: Targets
) -> None:
    limit = 1000
    server = make_proxy(faults=[f"drop-after:{limit}"])
    sock = connect(_proxy(server), targets.tcp_data, timeout=CLIENT_TIMEOUT)
    received = bytearray()
    reset = False
    try:
        sock.sendall(b"SOURCE 100000 7\n")
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        reset = True
    finally:
        sock.close()
    server.log.wait_for(lambda: server.requests()[0].closed, CLIENT_TIMEOUT)
    request = server.requests()[0]
    assert request.end == "drop-after"
    assert request.bytes_to_target + request.bytes_from_target == limit
    assert bytes(received) == seeded_bytes(7, request.bytes_from_target)
    assert reset, "the proxy should reset the client connection, not close it cleanly"


def test_fault_close_udp_ends_the_association(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(faults=["close-udp"])
    session = udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
    try:
        assert session.control.recv(1) == b""  # the server hung up the control connection
    finally:
        session.close()
    _wait_event(server, "close")
    (request,) = server.requests()
    assert request.end == "close-udp"


def test_fault_close_udp_after_n_datagrams(make_proxy: Any, targets: Targets) -> None:
    server = make_proxy(faults=["close-udp:2"])
    session = udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
    try:
        session.send(targets.udp_echo, b"one")
        assert session.recv()[1] == b"one"
        session.send(targets.udp_echo, b"two")
        assert session.control.recv(1) == b""
    finally:
        session.close()
    _wait_event(server, "close")
    assert server.requests()[0].end == "close-udp"


@pytest.mark.parametrize("spec", ["explode", "delay:x", "drop-after:", "refuse:z"])
def test_bad_fault_specs_are_rejected_with_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError, match="expected refuse"):
        ProxyFaults.parse([spec])


def test_fault_specs_parse() -> None:
    faults = ProxyFaults.parse(["refuse", "delay:50", "drop-after:10", "close-udp:3"])
    assert faults == ProxyFaults(refuse=5, delay_ms=50, drop_after=10, close_udp_after=3)


# --------------------------------------------------------------------------- the CLI


def test_cli_prints_ready_line_and_writes_jsonl(tmp_path: Path, targets: Targets) -> None:
    log = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.peers.recording",
            "--listen",
            "127.0.0.1:0",
            "--log",
            str(log),
            "--user",
            "u",
            "--password",
            "p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the ready line: the event we await
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with connect(
            ("127.0.0.1", port),
            targets.tcp_echo,
            username="u",
            password="p",
            timeout=CLIENT_TIMEOUT,
        ) as sock:
            assert _echo_roundtrip(sock, b"cli") == b"cli"
        _wait_file_event(log, "close")
    finally:
        proc.terminate()
        assert proc.wait(timeout=CLIENT_TIMEOUT) == 0
    events = [json.loads(x) for x in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["listening", "auth", "request"] and "close" in kinds
    request = next(e for e in events if e["event"] == "request")
    assert request["user"] == "u" and request["command"] == "CONNECT"
    assert request["target"] == {"host": "127.0.0.1", "port": targets.tcp_echo[1], "atyp": "ipv4"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "nope"],
        ["--listen", "127.0.0.1:1", "--fault", "bogus"],
        ["--listen", "127.0.0.1:1", "--user", "only-user"],
    ],
)
def test_cli_bad_arguments_exit_2(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness.peers.recording", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "error" in done.stderr


def test_seeded_data_is_deterministic_and_hash_helper_agrees() -> None:
    assert seeded_bytes(3, 200_000) == seeded_bytes(3, 200_000)
    assert seeded_bytes(3, 1000) != seeded_bytes(4, 1000)
    assert seeded_sha256(3, 200_000) == hashlib.sha256(seeded_bytes(3, 200_000)).hexdigest()


def test_tcp_data_duplex(make_proxy: Any, targets: Targets) -> None:
    """DUPLEX through the proxy: both directions verified by hash at both ends."""
    server = make_proxy()
    size = 500_000
    upload = seeded_bytes(11, size)
    with connect(_proxy(server), targets.tcp_data, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"DUPLEX %d 12\n" % size)
        sock.sendall(upload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    body, trailer = bytes(received[:size]), bytes(received[size:])
    assert body == seeded_bytes(12, size)
    assert trailer == f"{size} {hashlib.sha256(upload).hexdigest()}\n".encode()
    sent = hashlib.sha256(b"DUPLEX %d 12\n" % size + upload).hexdigest()
    assert_socks5_roundtrip(server, targets.tcp_data, sent, hashlib.sha256(received).hexdigest())


# --------------------------------------------------------------------------- helpers


def _wait_event(server: RecordingServer, kind: str) -> None:
    assert server.log.wait_for(
        lambda: any(e["event"] == kind for e in server.log.events), CLIENT_TIMEOUT
    ), f"no {kind!r} event: {server.log.events}"


def _wait_file_event(path: Path, kind: str) -> None:
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while True:
        text = path.read_text() if path.exists() else ""
        if any(json.loads(x)["event"] == kind for x in text.splitlines() if x.strip()):
            return
        assert time.monotonic() < deadline, f"no {kind!r} event in {path}: {text}"
        time.sleep(0.01)  # noqa: sleep-ok - another process's log file has no change event


# --------------------------------------------------------------------------- address map

SINGLE_MAP = AddressMap.parse(["192.0.2.0/24=127.0.0.1"], ["192.0.2.0/24", "198.51.100.0/24"])


def test_map_dials_the_mapped_address_and_logs_the_asked_one(
    make_proxy: Any, targets: Targets
) -> None:
    server = make_proxy(address_map=SINGLE_MAP)
    asked = ("192.0.2.10", targets.tcp_echo[1])
    with connect(_proxy(server), asked, timeout=CLIENT_TIMEOUT) as sock:
        assert _echo_roundtrip(sock, b"mapped") == b"mapped"
    digest = hashlib.sha256(b"mapped").hexdigest()
    request = assert_socks5_roundtrip(server, asked, digest, digest, command="CONNECT")
    assert request.target_host == "192.0.2.10"
    dialled = [e for e in server.log.events if e.get("event") == "request"]
    assert dialled[0]["dialled"] == "127.0.0.1"


def test_unreachable_prefix_is_refused_never_dialled(make_proxy: Any) -> None:
    server = make_proxy(address_map=SINGLE_MAP)
    with pytest.raises(Socks5ClientError) as info:
        connect(_proxy(server), ("198.51.100.99", 80), timeout=CLIENT_TIMEOUT)
    assert info.value.reply == Reply.HOST_UNREACHABLE
    assert SINGLE_MAP.dial("192.0.2.77") == "127.0.0.1"  # the map wins over unreachable
    assert SINGLE_MAP.dial("203.0.113.5") == "203.0.113.5"  # outside both: as asked
    assert SINGLE_MAP.dial("example.test") == "example.test"


def test_mapped_udp_replies_come_from_the_asked_address_and_the_real_port(
    make_proxy: Any,
) -> None:
    """The target answers from another port (endpoint-independent mapping): the client sees
    the address it asked for with the port the answer really came from."""
    server = make_proxy(address_map=SINGLE_MAP)
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inbound, outbound:
        inbound.bind(("127.0.0.1", 0))
        outbound.bind(("127.0.0.1", 0))
        answer_port = outbound.getsockname()[1]
        inbound.settimeout(CLIENT_TIMEOUT)
        session = udp_associate(_proxy(server), timeout=CLIENT_TIMEOUT)
        try:
            session.send(("192.0.2.10", inbound.getsockname()[1]), b"ping")
            data, peer = inbound.recvfrom(100)
            outbound.sendto(data.upper(), peer)
            source, reply = session.recv()
        finally:
            session.close()
    assert reply == b"PING"
    assert (source.host, source.port) == ("192.0.2.10", answer_port)


def test_bad_map_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected PREFIX=HOST"):
        AddressMap.parse(["192.0.2.0/24"], [])
    with pytest.raises(ValueError, match="bad --unreachable"):
        AddressMap.parse([], ["nope"])
