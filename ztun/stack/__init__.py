"""The system stack: sans-IO NAT hairpin for TCP, UDP sessions, local ICMP echo."""

from .events import (
    StackEvent,
    TcpSession,
    TcpSessionExpired,
    UdpDatagram,
    UdpSession,
    UdpSessionExpired,
)
from .nat import NatExhausted, TcpNatTable
from .system import SystemStack, hairpin_peer
from .udp import UdpSessionTable

__all__ = [
    "NatExhausted",
    "StackEvent",
    "SystemStack",
    "TcpNatTable",
    "TcpSession",
    "TcpSessionExpired",
    "UdpDatagram",
    "UdpSession",
    "UdpSessionExpired",
    "UdpSessionTable",
    "hairpin_peer",
]
