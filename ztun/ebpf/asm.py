"""ztun's eBPF assembler: instructions and labels in, `struct bpf_insn` bytes out.

ztun builds its kernel programs at run time from Python (the steering program, the
kernel NAT), so it needs no compiler and no ELF loader: map references are the map's
file descriptor in a BPF_PSEUDO_MAP_FD load (the kernel resolves it at BPF_PROG_LOAD),
helpers are called by number. Opcodes and the instruction layout are those of
include/uapi/linux/bpf.h and bpf_common.h; Documentation/bpf/standardization/
instruction-set.rst describes each form.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["INSN_SIZE", "Assembler", "imm32"]

# Instruction classes.
BPF_LD, BPF_LDX, BPF_ST, BPF_STX = 0x00, 0x01, 0x02, 0x03
BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0x04, 0x05, 0x06, 0x07
# Sizes and modes (loads and stores).
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_ATOMIC = 0x00, 0x20, 0x40, 0x60, 0xC0
# ALU operations.
BPF_ADD, BPF_SUB, BPF_MUL, BPF_OR, BPF_AND = 0x00, 0x10, 0x20, 0x40, 0x50
BPF_LSH, BPF_RSH, BPF_XOR, BPF_MOV, BPF_END = 0x60, 0x70, 0xA0, 0xB0, 0xD0
# Operand source; for BPF_END, the byte order to convert to.
BPF_K, BPF_X = 0x00, 0x08
BPF_TO_BE = 0x08
# Jumps.
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_CALL, BPF_EXIT, BPF_JLT, BPF_JLE = 0x80, 0x90, 0xA0, 0xB0
# Registers: R0 return value, R1-R5 arguments (clobbered by calls), R6-R9 callee-saved,
# R10 the read-only frame pointer.
BPF_REG_0, BPF_REG_1, BPF_REG_2, BPF_REG_3, BPF_REG_4, BPF_REG_5 = 0, 1, 2, 3, 4, 5
BPF_REG_6, BPF_REG_7, BPF_REG_8, BPF_REG_9, BPF_REG_10 = 6, 7, 8, 9, 10
#: src_reg of a 64-bit immediate load whose imm is a map's file descriptor.
BPF_PSEUDO_MAP_FD = 1
INSN_SIZE = 8  # struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }


def imm32(value: int) -> int:
    """A 32-bit constant as the signed `imm` field holds it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # a label: `off` is filled in by `Assembler.assemble`

    def encode(self, off: int) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, off, imm32(self.imm))


class Assembler:
    """Instructions and labels; jumps name a label and are resolved in `assemble`."""

    def __init__(self) -> None:
        self._insns: list[Insn] = []
        self._labels: dict[str, int] = {}
        self._fresh = 0

    def fresh_label(self, stem: str) -> str:
        self._fresh += 1
        return f"{stem}.{self._fresh}"

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def _emit(self, insn: Insn) -> None:
        self._insns.append(insn)

    # -- classic packet loads (socket filters; the context in R6; a failed load ends the
    #    program with 0)
    def ld_abs(self, size: int, offset: int) -> None:
        """R0 = the `size` big-endian field at `offset` (as a number)."""
        self._emit(Insn(BPF_LD | size | BPF_ABS, imm=offset))

    def ld_ind(self, size: int, src: int, offset: int) -> None:
        """R0 = the `size` big-endian field at `src + offset`."""
        self._emit(Insn(BPF_LD | size | BPF_IND, src=src, imm=offset))

    # -- memory (native byte order)
    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self._emit(Insn(BPF_LDX | size | BPF_MEM, dst=dst, src=src, off=off))

    def stx(self, size: int, dst: int, src: int, off: int) -> None:
        """*(size *)(dst + off) = src"""
        self._emit(Insn(BPF_STX | size | BPF_MEM, dst=dst, src=src, off=off))

    def atomic_add64(self, dst: int, src: int, off: int) -> None:
        """lock *(u64 *)(dst + off) += src (BPF_ATOMIC with imm BPF_ADD, no fetch)."""
        self._emit(Insn(BPF_STX | BPF_DW | BPF_ATOMIC, dst=dst, src=src, off=off, imm=BPF_ADD))

    def ld_map_fd(self, dst: int, map_fd: int) -> None:
        """dst = the map `map_fd` (a two-slot 64-bit immediate load the kernel resolves)."""
        self._emit(Insn(BPF_LD | BPF_DW | BPF_IMM, dst=dst, src=BPF_PSEUDO_MAP_FD, imm=map_fd))
        self._emit(Insn(0))  # the upper half of the immediate

    # -- arithmetic (ALU32 forms zero the upper half, so 64-bit compares see u32 values)
    def alu64_imm(self, op: int, dst: int, imm: int) -> None:
        self._emit(Insn(BPF_ALU64 | op | BPF_K, dst=dst, imm=imm))

    def alu32_imm(self, op: int, dst: int, imm: int) -> None:
        self._emit(Insn(BPF_ALU | op | BPF_K, dst=dst, imm=imm))

    def alu64_reg(self, op: int, dst: int, src: int) -> None:
        self._emit(Insn(BPF_ALU64 | op | BPF_X, dst=dst, src=src))

    def be(self, dst: int, bits: int) -> None:
        """dst = the low `bits` of dst converted between host and big-endian order (a
        swap on a little-endian host, a truncation on a big-endian one)."""
        if bits not in (16, 32, 64):
            raise ValueError(f"byte swap of {bits} bits")
        self._emit(Insn(BPF_ALU | BPF_END | BPF_TO_BE, dst=dst, imm=bits))

    def mov64_imm(self, dst: int, imm: int) -> None:
        self.alu64_imm(BPF_MOV, dst, imm)

    def mov64_reg(self, dst: int, src: int) -> None:
        self.alu64_reg(BPF_MOV, dst, src)

    def mov32_reg(self, dst: int, src: int) -> None:
        self._emit(Insn(BPF_ALU | BPF_MOV | BPF_X, dst=dst, src=src))

    # -- control flow
    def jmp_imm(self, op: int, dst: int, imm: int, target: str) -> None:
        """if (dst `op` imm) goto target -- a 64-bit compare with a small constant."""
        if not 0 <= imm < 1 << 31:
            raise ValueError(f"jump constant {imm:#x}: compare 32-bit values with xor32")
        self._emit(Insn(BPF_JMP | op | BPF_K, dst=dst, imm=imm, target=target))

    def jmp_reg(self, op: int, dst: int, src: int, target: str) -> None:
        """if (dst `op` src) goto target (64-bit, unsigned for the ordered compares)."""
        self._emit(Insn(BPF_JMP | op | BPF_X, dst=dst, src=src, target=target))

    def ja(self, target: str) -> None:
        self._emit(Insn(BPF_JMP | BPF_JA, target=target))

    def call(self, helper: int) -> None:
        """Call helper number `helper` (enum bpf_func_id): arguments in R1-R5, result in
        R0; R1-R5 are not preserved."""
        self._emit(Insn(BPF_JMP | BPF_CALL, imm=helper))

    def exit(self) -> None:
        self._emit(Insn(BPF_JMP | BPF_EXIT))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, insn in enumerate(self._insns):
            off = insn.off
            if insn.target is not None:
                if insn.target not in self._labels:
                    raise ValueError(f"jump to undefined label {insn.target!r}")
                off = self._labels[insn.target] - (pc + 1)
                if not -(1 << 15) <= off < 1 << 15:
                    raise ValueError(f"jump to {insn.target!r} out of range ({off})")
            out += insn.encode(off)
        return bytes(out)
