"""Hosts: the machines a test drives (network namespaces now; VMs later)."""

from harness.hosts.base import (
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SPAWN_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    CmdResult,
    CommandFailed,
    CommandTimeout,
    Host,
    IfAddress,
    LinkExists,
    LogLine,
    PathExists,
    Process,
    ProcessNotReady,
    Readiness,
    TcpListening,
    UdpListening,
)

__all__ = [
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_SPAWN_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "CmdResult",
    "CommandFailed",
    "CommandTimeout",
    "Host",
    "IfAddress",
    "LinkExists",
    "LogLine",
    "PathExists",
    "Process",
    "ProcessNotReady",
    "Readiness",
    "TcpListening",
    "UdpListening",
]
