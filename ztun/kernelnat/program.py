"""The kernel NAT's tc program, assembled: `model.run` in eBPF.

A BPF_PROG_TYPE_SCHED_CLS program for the TUN's clsact egress hook, in direct-action
mode (its return value is the verdict). It runs in __dev_queue_xmit before the queue is
picked (so before the `--workers` steering program, and before the packet taps: what it
redirects is never seen leaving the TUN) and before validate_xmit_skb, so the kernel's
own TCP segments reach it as they were built: GSO super-packets whose transport
checksum is CHECKSUM_PARTIAL. The checksum helpers know that state (see `model`), and
bpf_redirect(ifindex, BPF_F_INGRESS) hands the skb, still GSO and PARTIAL, to the TUN's
receive path (netif_rx), where the local listener (or the forwarding path, for an app
in another namespace) takes it as if ztun had written it.

Registers: R6 the skb; R7 the packet start, then the TCP payload length; R8 the packet
end, then the flow's map value; R9 the TCP header length; R1-R5 scratch and arguments.

`l3_offset` is where the IP header starts in skb->data: 0 on a TUN (no link-layer
header), ETH_HLEN under BPF_PROG_TEST_RUN, which gives a tc program the Ethernet header
it was handed.
"""

from __future__ import annotations

import os

from ..ebpf import syscall
from ..ebpf.asm import (
    BPF_ADD,
    BPF_AND,
    BPF_B,
    BPF_H,
    BPF_JEQ,
    BPF_JGT,
    BPF_JLT,
    BPF_JNE,
    BPF_LSH,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_5,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_RSH,
    BPF_SUB,
    BPF_W,
    Assembler,
)
from ..ebpf.syscall import BPF_PROG_TYPE_SCHED_CLS, ETH_HLEN
from .layout import (
    BPF_F_INGRESS,
    BPF_F_IPV6,
    BPF_F_PSEUDO_HDR,
    IP4_CSUM,
    IP4_FRAG,
    IP4_FRAGMENT_BITS,
    IP4_HEADER,
    IP4_KEY,
    IP4_PROTO,
    IP4_TOTAL_LEN,
    IP4_VER_IHL_PLAIN,
    IP6_HEADER,
    IP6_KEY,
    IP6_NEXT_HEADER,
    IP6_PAYLOAD_LEN,
    IPPROTO_TCP,
    TC_ACT_OK,
    TC_ACT_SHOT,
    TCP_ACK,
    TCP_CSUM,
    TCP_DATA_OFFSET,
    TCP_FLAGS,
    TCP_HEADER,
    TCP_SYN,
    VALUE4,
    VALUE6,
    ValueLayout,
)

__all__ = ["PROG_NAME", "ipv6_flag_supported", "load", "nat_program"]

PROG_NAME = b"ztun_nat"

# struct __sk_buff (include/uapi/linux/bpf.h): the fields the program reads.
SKB_LEN = 0
SKB_IFINDEX = 40
SKB_DATA = 76
SKB_DATA_END = 80

# enum bpf_func_id.
BPF_FUNC_MAP_LOOKUP_ELEM = 1
BPF_FUNC_SKB_STORE_BYTES = 9
BPF_FUNC_L3_CSUM_REPLACE = 10
BPF_FUNC_L4_CSUM_REPLACE = 11
BPF_FUNC_REDIRECT = 23


def _family(
    asm: Assembler,
    *,
    l3: int,
    l4: int,
    map_fd: int,
    key_at: int,
    value: ValueLayout,
    pseudo_flags: int,
) -> None:
    """The part after the IP header's own checks, for one family: R3 = the IP packet's
    length (skb->len - l3) is set by the caller; the packet start is in R7 and its
    range is checked up to the TCP header's end."""
    # Rule 2: not a SYN without ACK.
    asm.ldx(BPF_B, BPF_REG_2, BPF_REG_7, l3 + l4 + TCP_FLAGS)
    asm.alu64_imm(BPF_AND, BPF_REG_2, TCP_SYN | TCP_ACK)
    asm.jmp_imm(BPF_JEQ, BPF_REG_2, TCP_SYN, "pass")
    # Rule 3: 5 <= data offset, and the header fits the segment.
    asm.ldx(BPF_B, BPF_REG_9, BPF_REG_7, l3 + l4 + TCP_DATA_OFFSET)
    asm.alu64_imm(BPF_RSH, BPF_REG_9, 4)
    asm.alu64_imm(BPF_LSH, BPF_REG_9, 2)
    asm.jmp_imm(BPF_JLT, BPF_REG_9, TCP_HEADER, "pass")
    asm.alu64_imm(BPF_SUB, BPF_REG_3, l4)  # R3 = the TCP segment's length
    asm.jmp_reg(BPF_JGT, BPF_REG_9, BPF_REG_3, "pass")
    asm.alu64_reg(BPF_SUB, BPF_REG_3, BPF_REG_9)
    # Rule 4: the key is the packet's own bytes (a pointer into it).
    asm.mov64_reg(BPF_REG_2, BPF_REG_7)
    asm.alu64_imm(BPF_ADD, BPF_REG_2, l3 + key_at)
    asm.mov64_reg(BPF_REG_7, BPF_REG_3)  # R7: the payload length from here on
    asm.ld_map_fd(BPF_REG_1, map_fd)
    asm.call(BPF_FUNC_MAP_LOOKUP_ELEM)
    asm.jmp_imm(BPF_JEQ, BPF_REG_0, 0, "pass")
    asm.mov64_reg(BPF_REG_8, BPF_REG_0)
    csum = l3 + l4 + TCP_CSUM
    # The pseudo-header first: if it fails (e.g. a kernel without BPF_F_IPV6), nothing
    # has been written yet and the packet can still go to ztun as it is.
    _csum_replace(asm, BPF_FUNC_L4_CSUM_REPLACE, csum, value.addr_diff, pseudo_flags)
    asm.jmp_imm(BPF_JNE, BPF_REG_0, 0, "pass")
    _csum_replace(asm, BPF_FUNC_L4_CSUM_REPLACE, csum, value.port_diff, 0)
    asm.jmp_imm(BPF_JNE, BPF_REG_0, 0, "drop")
    if key_at == IP4_KEY:
        _csum_replace(asm, BPF_FUNC_L3_CSUM_REPLACE, l3 + IP4_CSUM, value.addr_diff, 0)
        asm.jmp_imm(BPF_JNE, BPF_REG_0, 0, "drop")
    asm.mov64_reg(BPF_REG_1, BPF_REG_6)
    asm.mov64_imm(BPF_REG_2, l3 + key_at)
    asm.mov64_reg(BPF_REG_3, BPF_REG_8)  # from the map value: the rewrite bytes
    asm.mov64_imm(BPF_REG_4, value.key_len)
    asm.mov64_imm(BPF_REG_5, 0)
    asm.call(BPF_FUNC_SKB_STORE_BYTES)
    asm.jmp_imm(BPF_JNE, BPF_REG_0, 0, "drop")
    asm.mov64_imm(BPF_REG_1, 1)
    asm.atomic_add64(BPF_REG_8, BPF_REG_1, value.packets)
    asm.atomic_add64(BPF_REG_8, BPF_REG_7, value.payload)
    asm.ja("redirect")


def _csum_replace(asm: Assembler, helper: int, offset: int, diff_at: int, flags: int) -> None:
    """helper(skb, offset, 0, value->diff, flags): size 0 in `flags` = `to` is a diff."""
    asm.mov64_reg(BPF_REG_1, BPF_REG_6)
    asm.mov64_imm(BPF_REG_2, offset)
    asm.mov64_imm(BPF_REG_3, 0)
    asm.ldx(BPF_W, BPF_REG_4, BPF_REG_8, diff_at)
    asm.mov64_imm(BPF_REG_5, flags)
    asm.call(helper)


def _ip_length(asm: Assembler, l3: int) -> None:
    """R3 = skb->len - l3: the IP packet's length. (Emitted for l3 = 0 too: the TUN's
    build and the tested one differ in constants only, instruction for instruction.)"""
    asm.ldx(BPF_W, BPF_REG_3, BPF_REG_6, SKB_LEN)
    asm.alu64_imm(BPF_SUB, BPF_REG_3, l3)


def _need(asm: Assembler, end: int) -> None:
    """Go to `pass` unless the linear data holds `end` bytes (R7 start, R8 end)."""
    asm.mov64_reg(BPF_REG_1, BPF_REG_7)
    asm.alu64_imm(BPF_ADD, BPF_REG_1, end)
    asm.jmp_reg(BPF_JGT, BPF_REG_1, BPF_REG_8, "pass")


def nat_program(map4_fd: int, map6_fd: int, *, l3_offset: int = 0, ipv6_flag: bool = True) -> bytes:
    """The instructions of the tc program over the flow maps `map4_fd` and `map6_fd`.

    `ipv6_flag`: pass BPF_F_IPV6 with IPv6 pseudo-header updates (Linux 6.16+; see
    `ipv6_flag_supported`). Without it a CHECKSUM_COMPLETE skb's csum goes wrong on
    IPv6 -- only forwarded packets received that way, which the receiving TCP then
    checks in software."""
    l3 = l3_offset
    asm = Assembler()
    asm.mov64_reg(BPF_REG_6, BPF_REG_1)
    asm.ldx(BPF_W, BPF_REG_7, BPF_REG_6, SKB_DATA)
    asm.ldx(BPF_W, BPF_REG_8, BPF_REG_6, SKB_DATA_END)
    _need(asm, l3 + IP4_HEADER + TCP_HEADER)
    asm.ldx(BPF_B, BPF_REG_2, BPF_REG_7, l3)
    asm.jmp_imm(BPF_JEQ, BPF_REG_2, IP4_VER_IHL_PLAIN, "ipv4")
    asm.alu64_imm(BPF_RSH, BPF_REG_2, 4)
    asm.jmp_imm(BPF_JNE, BPF_REG_2, 6, "pass")

    # IPv6, rule 1: TCP right after the fixed header, payload length = the packet's.
    _need(asm, l3 + IP6_HEADER + TCP_HEADER)
    asm.ldx(BPF_B, BPF_REG_2, BPF_REG_7, l3 + IP6_NEXT_HEADER)
    asm.jmp_imm(BPF_JNE, BPF_REG_2, IPPROTO_TCP, "pass")
    asm.ldx(BPF_H, BPF_REG_2, BPF_REG_7, l3 + IP6_PAYLOAD_LEN)
    asm.be(BPF_REG_2, 16)
    asm.alu64_imm(BPF_ADD, BPF_REG_2, IP6_HEADER)
    _ip_length(asm, l3)
    asm.jmp_reg(BPF_JNE, BPF_REG_2, BPF_REG_3, "pass")
    _family(
        asm,
        l3=l3,
        l4=IP6_HEADER,
        map_fd=map6_fd,
        key_at=IP6_KEY,
        value=VALUE6,
        pseudo_flags=BPF_F_PSEUDO_HDR | (BPF_F_IPV6 if ipv6_flag else 0),
    )

    # IPv4, rule 1: no options (checked above), TCP, not a fragment, whole.
    asm.label("ipv4")
    asm.ldx(BPF_B, BPF_REG_2, BPF_REG_7, l3 + IP4_PROTO)
    asm.jmp_imm(BPF_JNE, BPF_REG_2, IPPROTO_TCP, "pass")
    asm.ldx(BPF_H, BPF_REG_2, BPF_REG_7, l3 + IP4_FRAG)
    asm.be(BPF_REG_2, 16)
    asm.alu64_imm(BPF_AND, BPF_REG_2, IP4_FRAGMENT_BITS)
    asm.jmp_imm(BPF_JNE, BPF_REG_2, 0, "pass")
    asm.ldx(BPF_H, BPF_REG_2, BPF_REG_7, l3 + IP4_TOTAL_LEN)
    asm.be(BPF_REG_2, 16)
    _ip_length(asm, l3)
    asm.jmp_reg(BPF_JNE, BPF_REG_2, BPF_REG_3, "pass")
    _family(
        asm,
        l3=l3,
        l4=IP4_HEADER,
        map_fd=map4_fd,
        key_at=IP4_KEY,
        value=VALUE4,
        pseudo_flags=BPF_F_PSEUDO_HDR,
    )

    asm.label("redirect")
    asm.ldx(BPF_W, BPF_REG_1, BPF_REG_6, SKB_IFINDEX)
    asm.mov64_imm(BPF_REG_2, BPF_F_INGRESS)
    asm.call(BPF_FUNC_REDIRECT)  # TC_ACT_REDIRECT
    asm.exit()

    asm.label("pass")
    asm.mov64_imm(BPF_REG_0, TC_ACT_OK)
    asm.exit()
    # A helper failed after the packet was partly rewritten: delivering it would hand
    # the listener (or the app) a packet with the wrong checksum.
    asm.label("drop")
    asm.mov64_imm(BPF_REG_0, TC_ACT_SHOT)
    asm.exit()
    return asm.assemble()


def load(map4_fd: int, map6_fd: int, *, l3_offset: int = 0, ipv6_flag: bool = True) -> int:
    """Load the program; its fd (the maps stay referenced by it)."""
    insns = nat_program(map4_fd, map6_fd, l3_offset=l3_offset, ipv6_flag=ipv6_flag)
    return syscall.load_program(BPF_PROG_TYPE_SCHED_CLS, insns, PROG_NAME)


def ipv6_flag_supported() -> bool:
    """Whether bpf_l4_csum_replace takes BPF_F_IPV6 here (it returns -EINVAL where the
    flag is unknown): a two-call program run once on a 60-byte IPv6 packet."""
    asm = Assembler()
    asm.mov64_imm(BPF_REG_2, ETH_HLEN + IP6_HEADER + TCP_CSUM)
    asm.mov64_imm(BPF_REG_3, 0)
    asm.mov64_imm(BPF_REG_4, 0)
    asm.mov64_imm(BPF_REG_5, BPF_F_PSEUDO_HDR | BPF_F_IPV6)
    asm.call(BPF_FUNC_L4_CSUM_REPLACE)
    asm.exit()
    fd = syscall.load_program(BPF_PROG_TYPE_SCHED_CLS, asm.assemble(), b"ztun_probe")
    try:
        packet = bytes([0x60]) + bytes(3) + (TCP_HEADER).to_bytes(2, "big") + bytes(54)
        return syscall.test_run(fd, packet).retval == 0
    finally:
        os.close(fd)
