"""ztun harness: hosts, topologies, captures and faults for testing any tun2socks.

The names below are the harness core and import nothing heavy (no scapy), because the
pytest plugin imports this package at start-up.  Crafted packets and assertions live in
``harness.packets`` and ``harness.assertions``; SOCKS5 peers in ``harness.peers``.
"""

from harness.artifacts import TestArtifacts
from harness.capture import Capture, CaptureError, capture
from harness.defer import DeferStack, TeardownError
from harness.faults import Faults, Impairment, netem_support
from harness.hosts import (
    CmdResult,
    CommandFailed,
    CommandTimeout,
    Host,
    LinkExists,
    LogLine,
    PathExists,
    Process,
    ProcessNotReady,
    Readiness,
    TcpListening,
    UdpListening,
)
from harness.hosts.netns import NetnsHost
from harness.skips import require_root, require_tool
from harness.topo import (
    Endpoint,
    HostSpec,
    Link,
    LinkSpec,
    Namer,
    Topology,
    TopologySpec,
    client_proxy_server,
)

__all__ = [
    "Capture",
    "CaptureError",
    "CmdResult",
    "CommandFailed",
    "CommandTimeout",
    "DeferStack",
    "Endpoint",
    "Faults",
    "Host",
    "HostSpec",
    "Impairment",
    "Link",
    "LinkExists",
    "LinkSpec",
    "LogLine",
    "Namer",
    "NetnsHost",
    "PathExists",
    "Process",
    "ProcessNotReady",
    "Readiness",
    "TcpListening",
    "TeardownError",
    "TestArtifacts",
    "Topology",
    "TopologySpec",
    "UdpListening",
    "capture",
    "client_proxy_server",
    "netem_support",
    "require_root",
    "require_tool",
]
