"""Queue steering for a multi-queue TUN: an eBPF program that picks each packet's queue.

With `--workers N` every worker reads one queue of an IFF_MULTI_QUEUE TUN, and both
halves of a flow must come out of the same queue. The kernel's own choice (a flow hash,
remembered per queue for a while) cannot promise that: the NAT hairpin turns one app
flow into two 5-tuples. TUNSETSTEERINGEBPF replaces that choice with a
BPF_PROG_TYPE_SOCKET_FILTER program; drivers/net/tun.c (`tun_ebpf_select_queue`) keeps
its return value as a u16 and delivers the packet to queue ``R % numqueues``.

The function, rule by rule (the first that applies wins), for a packet starting at its
IP header:

1. TCP to the hairpin peer (``peer4``/``peer6``) -- the kernel listener's answer to a
   NAT'd flow -- gives its destination port: worker k owns NAT ports ``p % n == k``.
2. A destination inside a ``pinned`` network (the fake-IP ranges) gives 0.
3. With ``pin_dns``, TCP or UDP to port 53 gives 0 (fake-IP DNS state lives in worker 0).
4. Other TCP or UDP gives `source_hash` of the source port and the low 16 bits of the
   source address: the same for every packet of a TCP flow and of a UDP full-cone
   session (keyed by source). A multiplicative hash, not the bare XOR: Linux hands
   connect() even ephemeral ports (bind() gets the odd ones), so the low bit alone --
   all that `% 2` looks at -- would send every local flow to one worker.
5. Everything else gives 0: ICMP, IPv4 fragments (all of them: only the first has
   ports, and worker 0 must see every piece to reassemble the datagram), IPv6 extension
   headers (a Fragment header among them), other versions, and any packet too short for
   a field the rule needs.

`steering_key` is that function in Python (the reference the tests compare the program
with); `steering_program` assembles it; `load_program`, `attach`, `detach` and
`test_run` are the bpf(2) and ioctl calls around it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from ..ebpf import syscall
from ..ebpf.asm import (
    BPF_AND,
    BPF_B,
    BPF_H,
    BPF_JEQ,
    BPF_JLT,
    BPF_JNE,
    BPF_LSH,
    BPF_MOV,
    BPF_MUL,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_RSH,
    BPF_W,
    BPF_XOR,
    INSN_SIZE,
    Assembler,
    imm32,
)
from ..ebpf.syscall import BPF_PROG_TYPE_SOCKET_FILTER, BpfError

__all__ = [
    "INSN_SIZE",
    "TUNSETSTEERINGEBPF",
    "SteeringError",
    "attach",
    "detach",
    "load_program",
    "source_hash",
    "steering_key",
    "steering_program",
    "test_run",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_TCP = 6
IPPROTO_UDP = 17
DNS_PORT = 53

# --------------------------------------------------------------------------- packet layout

# Offsets from the start of the IP header (RFC 791, RFC 8200).
IP4_VER_IHL = 0
IP4_FRAG = 6  # 3 flag bits, 13 bits of fragment offset (in 8-byte units)
#: MF and the offset: any fragment, the first one too. All fragments of a datagram must
#: reach one worker, the one that reassembles them; only the first carries ports.
IP4_FRAGMENT_BITS = 0x3FFF
IP4_PROTO = 9
IP4_SADDR_LOW16 = 14  # last two bytes of the source address (12..15)
IP4_DADDR = 16
IP4_MIN_HEADER = 20
IP6_NEXT_HEADER = 6
IP6_SADDR_LOW16 = 22  # last two bytes of the source address (8..23)
IP6_DADDR = 24
IP6_HEADER = 40
# TCP and UDP both start with source port, destination port.
L4_SPORT = 0
L4_DPORT = 2
L4_PORTS_LEN = 4


def _pinned_by_version(
    pinned: Sequence[IpNetwork],
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    v4 = [net for net in pinned if isinstance(net, ipaddress.IPv4Network)]
    v6 = [net for net in pinned if isinstance(net, ipaddress.IPv6Network)]
    if len(v4) + len(v6) != len(pinned):
        raise TypeError(f"pinned: expected IPv4Network/IPv6Network, got {pinned!r}")
    return v4, v6


def _check_peer(peer: bytes | None, size: int, what: str) -> None:
    if peer is not None and len(peer) != size:
        raise ValueError(f"{what}: {size} bytes expected, got {len(peer)}")


def steering_key(
    packet: bytes | bytearray | memoryview,
    *,
    peer4: bytes | None,
    peer6: bytes | None,
    pinned: Sequence[IpNetwork] = (),
    pin_dns: bool = False,
) -> int:
    """The value the steering program returns for `packet` (an IP packet); the kernel
    delivers the packet to queue ``steering_key(...) % numqueues``."""
    _check_peer(peer4, 4, "peer4")
    _check_peer(peer6, 16, "peer6")
    pinned4, pinned6 = _pinned_by_version(pinned)
    pkt = bytes(packet)
    if not pkt:
        return 0
    version = pkt[IP4_VER_IHL] >> 4
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    nets: Sequence[IpNetwork]
    if version == 4:
        if len(pkt) < IP4_MIN_HEADER:
            return 0
        if int.from_bytes(pkt[IP4_FRAG : IP4_FRAG + 2], "big") & IP4_FRAGMENT_BITS:
            return 0
        ihl = pkt[IP4_VER_IHL] & 0x0F
        if ihl < 5:
            return 0
        l4, proto, peer, nets = ihl * 4, pkt[IP4_PROTO], peer4, pinned4
        daddr = ipaddress.IPv4Address(pkt[IP4_DADDR : IP4_DADDR + 4])
        saddr_low16 = int.from_bytes(pkt[IP4_SADDR_LOW16 : IP4_SADDR_LOW16 + 2], "big")
    elif version == 6:
        if len(pkt) < IP6_HEADER:
            return 0
        l4, proto, peer, nets = IP6_HEADER, pkt[IP6_NEXT_HEADER], peer6, pinned6
        daddr = ipaddress.IPv6Address(pkt[IP6_DADDR : IP6_DADDR + 16])
        saddr_low16 = int.from_bytes(pkt[IP6_SADDR_LOW16 : IP6_SADDR_LOW16 + 2], "big")
    else:
        return 0
    ports = pkt[l4 : l4 + L4_PORTS_LEN]
    have_ports = len(ports) == L4_PORTS_LEN
    sport = int.from_bytes(ports[L4_SPORT : L4_SPORT + 2], "big")
    dport = int.from_bytes(ports[L4_DPORT : L4_DPORT + 2], "big")
    if peer is not None and proto == IPPROTO_TCP and daddr.packed == peer:
        return dport if have_ports else 0  # rule 1
    if any(daddr in net for net in nets):
        return 0  # rule 2
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or not have_ports:
        return 0  # rule 5
    if pin_dns and dport == DNS_PORT:
        return 0  # rule 3
    return source_hash(sport, saddr_low16)  # rule 4


#: Knuth's multiplicative constant (2^32 / golden ratio): the product's upper half mixes
#: every input bit, so `% n` for small n sees all of them.
GOLDEN32 = 0x9E3779B1


def source_hash(sport: int, saddr_low16: int) -> int:
    """Rule 4's value: ((sport ^ saddr_low16) * GOLDEN32 mod 2^32) >> 16, in 0..65535."""
    return (((sport ^ saddr_low16) * GOLDEN32) & 0xFFFFFFFF) >> 16


# --------------------------------------------------------------------------- the program


def _network_words(net: IpNetwork) -> list[tuple[int, int]]:
    """(mask, value) of each 32-bit word of `net` that its prefix constrains."""
    nwords = net.max_prefixlen // 32
    addr = int(net.network_address)
    mask = int(net.netmask)
    words = []
    for i in range(nwords):
        shift = 32 * (nwords - 1 - i)
        word_mask = (mask >> shift) & 0xFFFFFFFF
        if word_mask:
            words.append((word_mask, (addr >> shift) & 0xFFFFFFFF))
    return words


def _daddr_in(asm: Assembler, daddr_offset: int, net: IpNetwork, otherwise: str) -> None:
    """Fall through if the destination address is in `net`, else go to `otherwise`."""
    for i, (mask, value) in enumerate(_network_words(net)):
        asm.ld_abs(BPF_W, daddr_offset + 4 * i)
        asm.mov32_reg(BPF_REG_1, BPF_REG_0)
        if mask != 0xFFFFFFFF:
            asm.alu32_imm(BPF_AND, BPF_REG_1, mask)
        asm.alu32_imm(BPF_XOR, BPF_REG_1, value)
        asm.jmp_imm(BPF_JNE, BPF_REG_1, 0, otherwise)


def _destination_rules(
    asm: Assembler, daddr_offset: int, peer: IpNetwork | None, pinned: Sequence[IpNetwork]
) -> None:
    """Rules 1 and 2; R7 = transport offset, R8 = protocol."""
    if peer is not None:
        not_peer = asm.fresh_label("not_peer")
        asm.jmp_imm(BPF_JNE, BPF_REG_8, IPPROTO_TCP, not_peer)
        _daddr_in(asm, daddr_offset, peer, not_peer)
        asm.ld_ind(BPF_H, BPF_REG_7, L4_DPORT)
        asm.exit()
        asm.label(not_peer)
    for net in pinned:
        outside = asm.fresh_label("outside")
        _daddr_in(asm, daddr_offset, net, outside)
        asm.ja("ret0")
        asm.label(outside)


def steering_program(
    *,
    peer4: bytes | None,
    peer6: bytes | None,
    pinned: Sequence[IpNetwork] = (),
    pin_dns: bool = False,
) -> bytes:
    """The instructions of the socket-filter program that computes `steering_key`.

    Loads are LD_ABS/LD_IND relative to skb->data, which is the IP header here: the
    program runs from the TUN's ndo_select_queue on transmit, and an IFF_TUN device has
    no link-layer header (header_ops NULL, hard_header_len 0), so nothing is pushed in
    front of the IP header; BPF_PROG_TEST_RUN pulls the Ethernet header it is given
    before running a socket filter, so there too offset 0 is the IP header. (skb->data
    offsets go through skb_copy_bits, so headers in paged data still load; SKF_NET_OFF
    loads would read the linear part only.) A load past the end ends the program with
    0 -- rule 5's "truncated" for free.

    Registers: R6 the skb (LD_ABS needs it there), R7 the transport header's offset,
    R8 the protocol, R9 the source address's low 16 bits; R0/R1 scratch.
    """
    _check_peer(peer4, 4, "peer4")
    _check_peer(peer6, 16, "peer6")
    pinned4, pinned6 = _pinned_by_version(pinned)
    asm = Assembler()
    asm.mov64_reg(BPF_REG_6, BPF_REG_1)
    asm.ld_abs(BPF_B, IP4_VER_IHL)
    asm.alu64_imm(BPF_RSH, BPF_REG_0, 4)
    asm.jmp_imm(BPF_JEQ, BPF_REG_0, 6, "ipv6")
    asm.jmp_imm(BPF_JNE, BPF_REG_0, 4, "ret0")

    # IPv4: the minimum header must be there (the last 32-bit load may not be emitted).
    asm.ld_abs(BPF_W, IP4_MIN_HEADER - 4)
    asm.ld_abs(BPF_H, IP4_FRAG)
    asm.alu64_imm(BPF_AND, BPF_REG_0, IP4_FRAGMENT_BITS)
    asm.jmp_imm(BPF_JNE, BPF_REG_0, 0, "ret0")
    asm.ld_abs(BPF_B, IP4_VER_IHL)
    asm.alu64_imm(BPF_AND, BPF_REG_0, 0x0F)
    asm.jmp_imm(BPF_JLT, BPF_REG_0, 5, "ret0")
    asm.alu64_imm(BPF_LSH, BPF_REG_0, 2)
    asm.mov64_reg(BPF_REG_7, BPF_REG_0)
    asm.ld_abs(BPF_B, IP4_PROTO)
    asm.mov64_reg(BPF_REG_8, BPF_REG_0)
    asm.ld_abs(BPF_H, IP4_SADDR_LOW16)
    asm.mov64_reg(BPF_REG_9, BPF_REG_0)
    peer4_net = ipaddress.IPv4Network((peer4, 32)) if peer4 is not None else None
    _destination_rules(asm, IP4_DADDR, peer4_net, pinned4)
    asm.ja("transport")

    asm.label("ipv6")
    asm.ld_abs(BPF_W, IP6_HEADER - 4)  # the fixed header must be whole
    asm.alu64_imm(BPF_MOV, BPF_REG_7, IP6_HEADER)
    asm.ld_abs(BPF_B, IP6_NEXT_HEADER)
    asm.mov64_reg(BPF_REG_8, BPF_REG_0)
    asm.ld_abs(BPF_H, IP6_SADDR_LOW16)
    asm.mov64_reg(BPF_REG_9, BPF_REG_0)
    peer6_net = ipaddress.IPv6Network((peer6, 128)) if peer6 is not None else None
    _destination_rules(asm, IP6_DADDR, peer6_net, pinned6)

    asm.label("transport")  # rules 3 and 4
    asm.jmp_imm(BPF_JEQ, BPF_REG_8, IPPROTO_TCP, "ports")
    asm.jmp_imm(BPF_JNE, BPF_REG_8, IPPROTO_UDP, "ret0")
    asm.label("ports")
    asm.ld_ind(BPF_H, BPF_REG_7, L4_DPORT)  # also: both ports are there
    if pin_dns:
        asm.jmp_imm(BPF_JEQ, BPF_REG_0, DNS_PORT, "ret0")
    asm.ld_ind(BPF_H, BPF_REG_7, L4_SPORT)
    asm.alu64_reg(BPF_XOR, BPF_REG_0, BPF_REG_9)
    asm.alu32_imm(BPF_MUL, BPF_REG_0, imm32(GOLDEN32))  # 32-bit: wraps mod 2^32
    asm.alu32_imm(BPF_RSH, BPF_REG_0, 16)
    asm.exit()

    asm.label("ret0")
    asm.alu64_imm(BPF_MOV, BPF_REG_0, 0)
    asm.exit()
    return asm.assemble()


# --------------------------------------------------------------------------- bpf(2)

#: The steering program's errors are bpf(2)'s (an OSError with the verifier's log).
SteeringError = BpfError
PROG_NAME = b"ztun_steer"


def load_program(insns: bytes) -> int:
    """Load a socket-filter program; return its fd (close-on-exec). A rejection is
    raised in SteeringError with the verifier's log."""
    return syscall.load_program(BPF_PROG_TYPE_SOCKET_FILTER, insns, PROG_NAME)


def test_run(prog_fd: int, packet: bytes) -> int:
    """Run the program once on `packet` (an IP packet) with BPF_PROG_TEST_RUN; return R.

    A socket filter's test run pulls the Ethernet header `syscall.test_run` puts in
    front before the program runs, so the program sees the IP header at offset 0, as
    on the TUN."""
    return syscall.test_run(prog_fd, packet).retval


# --------------------------------------------------------------------------- the TUN side


def _ior(kind: str, nr: int, size: int) -> int:
    """_IOR(type, nr, size) of include/uapi/asm-generic/ioctl.h."""
    ioc_read, nrbits, typebits, sizebits = 2, 8, 8, 14
    return (
        (ioc_read << (nrbits + typebits + sizebits))
        | (size << (nrbits + typebits))
        | (ord(kind) << nrbits)
        | nr
    )


#: include/uapi/linux/if_tun.h: _IOR('T', 224, int) (0x800454e0).
TUNSETSTEERINGEBPF = _ior("T", 224, struct.calcsize("i"))


def _set_steering(tun_fd: int, prog_fd: int) -> None:
    import fcntl  # Linux only: imported where used, so the pure parts load on Windows

    try:
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog_fd))
    except OSError as exc:
        raise SteeringError(exc.errno or 0, f"TUNSETSTEERINGEBPF: {exc.strerror}") from exc


def attach(tun_fd: int, prog_fd: int) -> None:
    """Steer the TUN behind `tun_fd` (any of its queues) with the program `prog_fd`.

    The device takes its own reference: `prog_fd` may be closed afterwards. The program
    is the device's, not the descriptor's; it goes with the device."""
    _set_steering(tun_fd, prog_fd)


def detach(tun_fd: int) -> None:
    """Back to the kernel's own queue choice."""
    _set_steering(tun_fd, -1)


test_run.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
