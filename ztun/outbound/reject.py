"""Reject outbound: what a "reject" rule resolves to; every open fails with `Rejected`."""

from __future__ import annotations

from .base import DatagramHandler, TcpStream, UdpAssociation
from .errors import Rejected
from .target import Target


class RejectOutbound:
    """Refuse every flow; the engine answers the app with a reset (TCP) or drops (UDP)."""

    def __repr__(self) -> str:
        return "RejectOutbound()"

    async def open_tcp(self, target: Target) -> TcpStream:
        raise Rejected(f"TCP to {target} rejected by rule")

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        raise Rejected("UDP rejected by rule")
