"""Version dispatch: a TUN hands over IPv4 and IPv6 packets on the same fd."""

from __future__ import annotations

from ztun.wire._types import BytesLike
from ztun.wire.errors import Malformed, Truncated
from ztun.wire.ipv4 import Ipv4Packet
from ztun.wire.ipv6 import Ipv6Packet

__all__ = ["parse_ip"]

_VERSION_SHIFT = 4
_IPV4 = 4
_IPV6 = 6


def parse_ip(buf: BytesLike) -> Ipv4Packet | Ipv6Packet:
    """Return a checked view of ``buf``, IPv4 or IPv6 by its version nibble."""
    if not len(buf):
        raise Truncated("truncated", "empty packet")
    version = buf[0] >> _VERSION_SHIFT
    if version == _IPV4:
        return Ipv4Packet.checked(buf)
    if version == _IPV6:
        return Ipv6Packet.checked(buf)
    raise Malformed("bad_version", f"IP version field is {version}")
