"""The system stack: sans-IO NAT hairpin for TCP, UDP sessions and their flow policy, ICMP
echo (local, rejected or forwarded), IP reassembly."""

from .events import (
    StackEvent,
    TcpSession,
    TcpSessionExpired,
    UdpDatagram,
    UdpSession,
    UdpSessionExpired,
)
from .icmpecho import IcmpEchoRequest, IcmpMode
from .nat import NatExhausted, TcpNatTable
from .system import NatObserver, SystemStack, hairpin_peer
from .udp import UdpSessionTable

__all__ = [
    "IcmpEchoRequest",
    "IcmpMode",
    "NatExhausted",
    "NatObserver",
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
