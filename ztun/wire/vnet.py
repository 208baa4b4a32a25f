"""virtio_net_hdr: the 10-byte prefix of every frame on a TUN opened with IFF_VNET_HDR.

With TUNSETOFFLOAD (CSUM, TSO4, TSO6) the kernel hands ztun TCP "super-packets" of up to
64 KiB with one header describing how to segment them later (gso_type, gso_size) and
where the still-missing checksum goes (NEEDS_CSUM, csum_start, csum_offset). ztun
rewrites such a frame once and writes it back with the same header: the kernel
segments it (or delivers it whole to a local socket), so Python's per-packet cost is
paid once per 64 KiB.

NEEDS_CSUM means the transport checksum field holds the *uncomplemented* folded
pseudo-header sum (Linux seeds it with ~tcp_v4_check(len, saddr, daddr, 0)); the rest
is summed by whoever finishes the checksum. A NAT rewrite therefore adds the address
delta to that partial sum (`apply_partial_delta`) and leaves the ports alone: they are
in the part the kernel sums later. The layout is `struct virtio_net_hdr` in
include/uapi/linux/virtio_net.h, in native byte order (TUNSETVNETLE/BE not used).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ztun.wire.errors import Truncated

VNET_HDR_LEN = 10
_FORMAT = struct.Struct("=BBHHHH")

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

#: The header of a frame that needs nothing from the kernel (full checksums, no GSO).
ZERO_HDR = bytes(VNET_HDR_LEN)


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def parse(cls, frame: bytes | bytearray | memoryview) -> VnetHdr:
        if len(frame) < VNET_HDR_LEN:
            raise Truncated(
                "truncated", f"virtio_net_hdr needs {VNET_HDR_LEN} bytes, got {len(frame)}"
            )
        return cls(*_FORMAT.unpack_from(frame, 0))

    def emit(self, buf: bytearray | memoryview) -> None:
        _FORMAT.pack_into(
            buf,
            0,
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    def pack(self) -> bytes:
        return _FORMAT.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)


def apply_partial_delta(partial: int, delta: int) -> int:
    """Add a `checksum_delta` to an uncomplemented partial sum (NEEDS_CSUM frames)."""
    total = partial + delta
    total = (total & 0xFFFF) + (total >> 16)
    return total
