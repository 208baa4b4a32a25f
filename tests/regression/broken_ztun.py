"""A deliberately broken ztun, for the negative regression tests only.

    ZTUN_BROKEN=drop-fin|corrupt-checksum python broken_ztun.py run --device tun://zt0 ...

It imports the real ztun, wraps ``SystemStack.receive`` (the per-packet entry point of
the stack) before the CLI builds anything, and then runs ztun's own CLI -- so the
binary under test is ztun with exactly one fault, and ztun/ itself carries no test hook:

* ``drop-fin``: a FIN on its way from ztun's listener back to the app is not written to
  the TUN (the app never learns that the server closed);
* ``corrupt-checksum``: every TCP segment on its way back to the app leaves with one
  checksum bit flipped. With ztun's default offloads that segment is CHECKSUM_PARTIAL,
  which the receiving kernel trusts without checking: the app works perfectly, and only
  a capture can tell -- the kind of regression golden traces exist for.

A golden comparison that passes against this binary is worthless; tests/regression
checks that it fails, and how it reads.
"""

from __future__ import annotations

import os
import sys

from ztun.cli import main
from ztun.stack import system
from ztun.wire import FIN, Ipv4Packet, TcpPacket, parse_ip

PROTO_TCP = 6
CHECKSUM_FLIP = 0x0100
MODES = ("drop-fin", "corrupt-checksum")

_original_receive = system.SystemStack.receive


def _to_app(stack: system.SystemStack, out: memoryview) -> TcpPacket | None:
    """The TCP view of a rewritten packet headed for the app (None: anything else)."""
    ip = parse_ip(out)
    if isinstance(ip, Ipv4Packet):
        proto, offset, nat = ip.protocol, ip.header_len, stack.nat4
    else:
        (proto, offset), nat = ip.upper_layer(), stack.nat6
    if proto != PROTO_TCP or nat is None:
        return None
    tcp = TcpPacket.checked(out[offset:])
    toward_listener = tcp.dst_port == nat.listen_port and bytes(ip.dst) == nat.server_addr
    return None if toward_listener else tcp


def _make_receive(mode: str):  # type: ignore[no-untyped-def]
    def receive(
        self: system.SystemStack, packet: memoryview, now: float, csum_partial: bool = False
    ) -> system.Output:
        out = _original_receive(self, packet, now, csum_partial)
        if type(out) is not memoryview:
            return out
        tcp = _to_app(self, out)
        if tcp is None:
            return out
        if mode == "drop-fin" and tcp.flags & FIN:
            self.counters["broken_fin_dropped"] += 1
            return None
        if mode == "corrupt-checksum":
            tcp.checksum ^= CHECKSUM_FLIP
            self.counters["broken_checksum_corrupted"] += 1
        return out

    return receive


def install(mode: str) -> None:
    """Break ztun's stack in this process (before the CLI builds it)."""
    if mode not in MODES:
        raise SystemExit(
            f"broken_ztun: ZTUN_BROKEN must be one of {', '.join(MODES)}, not {mode!r}"
        )
    system.SystemStack.receive = _make_receive(mode)  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ.get("ZTUN_BROKEN", ""))
    sys.exit(main())
