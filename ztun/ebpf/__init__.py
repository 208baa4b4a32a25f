"""eBPF without a compiler: ztun's assembler and the bpf(2) calls around it (programs,
test runs, maps). Used by the TUN steering program and the kernel NAT."""

from .asm import INSN_SIZE, Assembler
from .syscall import BpfError, TestRun, load_program, test_run

__all__ = ["INSN_SIZE", "Assembler", "BpfError", "TestRun", "load_program", "test_run"]
