"""ztun.wire -- the sans-IO packet layer: zero-copy views, frozen reprs, builders.

Views (``Ipv4Packet``, ``TcpPacket``, ...) wrap a buffer and read/write fields in place;
that is the per-packet path.  Reprs (``Ipv4Repr``, ``TcpRepr``, ...) are small frozen
values that parse from and emit into views; builders and tests use them.  No sockets,
no clocks, no randomness here.

ICMP type constants exist for both versions with the same names; they are not
re-exported here -- use ``ztun.wire.icmp.ECHO_REQUEST`` / ``ztun.wire.icmpv6.ECHO_REQUEST``.
"""

from ztun.wire import icmp, icmpv6
from ztun.wire.build import (
    Address,
    build_icmp_echo,
    build_icmp_unreachable,
    build_tcp,
    build_udp,
)
from ztun.wire.checksum import (
    apply_delta,
    checksum_delta,
    incremental_update,
    internet_checksum,
    ones_sum,
    pseudo_header_sum,
)
from ztun.wire.errors import Malformed, Truncated, WireError
from ztun.wire.icmp import IcmpPacket
from ztun.wire.icmpv6 import Icmpv6Packet
from ztun.wire.ip import parse_ip
from ztun.wire.ipv4 import Ipv4Packet, Ipv4Repr
from ztun.wire.ipv6 import MAX_EXT_HEADERS, Ipv6Packet, Ipv6Repr
from ztun.wire.proto import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from ztun.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    TcpOptions,
    TcpPacket,
    TcpRepr,
    emit_options,
    parse_options,
)
from ztun.wire.udp import UdpPacket, UdpRepr

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "IPPROTO_AH",
    "IPPROTO_DSTOPTS",
    "IPPROTO_ESP",
    "IPPROTO_FRAGMENT",
    "IPPROTO_HOPOPTS",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_NONE",
    "IPPROTO_ROUTING",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "MAX_EXT_HEADERS",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "Address",
    "IcmpPacket",
    "Icmpv6Packet",
    "Ipv4Packet",
    "Ipv4Repr",
    "Ipv6Packet",
    "Ipv6Repr",
    "Malformed",
    "TcpOptions",
    "TcpPacket",
    "TcpRepr",
    "Truncated",
    "UdpPacket",
    "UdpRepr",
    "WireError",
    "apply_delta",
    "build_icmp_echo",
    "build_icmp_unreachable",
    "build_tcp",
    "build_udp",
    "checksum_delta",
    "emit_options",
    "icmp",
    "icmpv6",
    "incremental_update",
    "internet_checksum",
    "ones_sum",
    "parse_ip",
    "parse_options",
    "pseudo_header_sum",
]
