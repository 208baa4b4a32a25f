"""Peers of the path under test: SOCKS5 servers (ours and real ones) and traffic targets.

Names are imported lazily (PEP 562): ``python -m harness.peers.recording`` runs inside
hosts, and an eager import here would load that module twice (runpy warns) and pull in
the starters' dependencies for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "harness.peers.recording": (
        "EventLog",
        "ProxyFaults",
        "RecordingServer",
        "Socks5Request",
        "UdpTargetStats",
        "load_requests",
        "parse_jsonl",
    ),
    "harness.peers.starters": (
        "PeerServer",
        "RecordingSocks5",
        "Socks5Server",
        "danted_config",
        "dnsmasq_argv",
        "host_python",
        "nginx_config",
        "require_tool",
        "sshd_config",
        "start_danted",
        "start_dnsmasq",
        "start_http_server",
        "start_microsocks",
        "start_recording",
        "start_ssh_dynamic",
        "start_tcp_data",
        "start_tcp_echo",
        "start_udp_echo",
        "which",
    ),
    "harness.peers.targets": ("seeded_bytes", "seeded_chunks", "seeded_sha256"),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from harness.peers.recording import (
        EventLog,
        ProxyFaults,
        RecordingServer,
        Socks5Request,
        UdpTargetStats,
        load_requests,
        parse_jsonl,
    )
    from harness.peers.starters import (
        PeerServer,
        RecordingSocks5,
        Socks5Server,
        danted_config,
        dnsmasq_argv,
        host_python,
        nginx_config,
        require_tool,
        sshd_config,
        start_danted,
        start_dnsmasq,
        start_http_server,
        start_microsocks,
        start_recording,
        start_ssh_dynamic,
        start_tcp_data,
        start_tcp_echo,
        start_udp_echo,
        which,
    )
    from harness.peers.targets import seeded_bytes, seeded_chunks, seeded_sha256


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'harness.peers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "EventLog",
    "PeerServer",
    "ProxyFaults",
    "RecordingServer",
    "RecordingSocks5",
    "Socks5Request",
    "Socks5Server",
    "UdpTargetStats",
    "danted_config",
    "dnsmasq_argv",
    "host_python",
    "load_requests",
    "nginx_config",
    "parse_jsonl",
    "require_tool",
    "seeded_bytes",
    "seeded_chunks",
    "seeded_sha256",
    "sshd_config",
    "start_danted",
    "start_dnsmasq",
    "start_http_server",
    "start_microsocks",
    "start_recording",
    "start_ssh_dynamic",
    "start_tcp_data",
    "start_tcp_echo",
    "start_udp_echo",
    "which",
]
