"""The kernel NAT: the stack's TCP hairpin rewrite as a tc program on the TUN's egress.

For every TCP flow the stack's NAT holds, the kernel rewrites the app's segments onto
the hairpin and the listener's answers back, and hands them straight to the TUN's
receive path: after its SYN, a flow's packets never reach ztun. The program is
assembled by ztun (`program`), held to a Python model of the rewrite (`model`) with
BPF_PROG_TEST_RUN, driven by BPF hash maps (`maps`) that `KernelNat` fills from the
stack's NAT table, and attached through netlink (`attach`).
"""

from .maps import Counters, FlowMaps
from .observer import KernelNat

__all__ = ["Counters", "FlowMaps", "KernelNat"]
