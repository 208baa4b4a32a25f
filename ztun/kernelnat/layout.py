"""Where the kernel NAT reads and writes: packet offsets, map keys and values, verdicts.

One place for the numbers the program (`program.py`), its Python model (`model.py`) and
the map code (`maps.py`) share.

A flow map's key is the packet's own bytes: source address, destination address,
source port, destination port are contiguous in an IPv4 header without options followed
by TCP (offsets 12..23) and in an IPv6 header followed by TCP (8..43), so the program
looks a packet up with a pointer into it, and the value's first bytes are what goes
back over that same span. The value then holds the two checksum differences of that
replacement, as the kernel's helpers take them (a `__wsum` in native byte order, see
`native_diff`), and the per-flow counters the program adds to.
"""

from __future__ import annotations

import struct
import sys

from ..wire import proto, tcp
from ..wire.ipv4 import Ipv4Header
from ..wire.ipv6 import Ipv6Header
from ..wire.tcp import TcpHeader

# tc verdicts (include/uapi/linux/pkt_cls.h).
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7

IPPROTO_TCP = proto.IPPROTO_TCP
TCP_SYN, TCP_ACK = tcp.SYN, tcp.ACK
# Header offsets are wire's (one declaration of RFC 791/8200/9293 for ztun), named here as
# the program and its model use them.
IP4_VER_IHL_PLAIN = Ipv4Header.VERSION << 4 | Ipv4Header.MIN_HEADER_LEN >> Ipv4Header.IHL_SHIFT
IP4_TOTAL_LEN = Ipv4Header.TOTAL_LEN
IP4_FRAG = Ipv4Header.FLAGS_FRAG
IP4_FRAGMENT_BITS = Ipv4Header.MF | Ipv4Header.FRAG_MASK
IP4_PROTO = Ipv4Header.PROTOCOL
IP4_CSUM = Ipv4Header.CHECKSUM
IP4_KEY = Ipv4Header.SRC.start  # saddr, daddr, then the TCP ports
IP4_HEADER = Ipv4Header.MIN_HEADER_LEN
# IPv6: a TCP header right after the fixed header, no extension headers.
IP6_PAYLOAD_LEN = Ipv6Header.PAYLOAD_LEN
IP6_NEXT_HEADER = Ipv6Header.NEXT_HEADER
IP6_KEY = Ipv6Header.SRC.start
IP6_HEADER = Ipv6Header.HEADER_LEN
# TCP, from the start of its header.
TCP_DATA_OFFSET = TcpHeader.DATA_OFF  # high nibble: header length in 32-bit words
TCP_FLAGS = TcpHeader.FLAGS
TCP_CSUM = TcpHeader.CHECKSUM
TCP_HEADER = TcpHeader.MIN_HEADER_LEN

KEY4_LEN = 4 + 4 + 2 + 2
KEY6_LEN = 16 + 16 + 2 + 2


class ValueLayout:
    """A flow map value: rewrite bytes, addr_diff (u32), port_diff (u32), 4 bytes of
    padding, packets (u64), payload bytes (u64); native byte order, the counters 8-byte
    aligned for the program's atomic adds."""

    def __init__(self, key_len: int) -> None:
        self.key_len = key_len
        self.struct = struct.Struct(f"={key_len}sII4xQQ")
        self.size = self.struct.size
        self.addr_diff = key_len
        self.port_diff = key_len + 4
        self.packets = key_len + 12
        self.payload = key_len + 20
        if self.packets % 8:
            raise AssertionError(f"counters of a {key_len}-byte key misaligned")


VALUE4 = ValueLayout(KEY4_LEN)
VALUE6 = ValueLayout(KEY6_LEN)

#: bpf_l3_csum_replace / bpf_l4_csum_replace flags (include/uapi/linux/bpf.h).
BPF_F_PSEUDO_HDR = 1 << 4
#: For an IPv6 pseudo-header update: leave a CHECKSUM_COMPLETE skb's csum alone (the
#: addresses are inside what it covers, unlike IPv4's, whose header sums to zero).
BPF_F_IPV6 = 1 << 7
BPF_F_INGRESS = 1  # bpf_redirect: into the device's receive path


def native_diff(delta: int) -> int:
    """A big-endian RFC 1624 difference (`checksum_delta`) as the kernel's csum helpers
    take it: ones'-complement sums are the same up to a byte swap whichever order the
    16-bit words are read in (RFC 1071 2(B)), and the kernel reads them natively."""
    if sys.byteorder == "little":
        return ((delta & 0xFF) << 8) | (delta >> 8)
    return delta
