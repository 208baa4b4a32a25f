"""Faults on the path: degrade one link (loss, delay, reordering, duplication, corruption,
rate, MTU clamp) with ``tc netem`` inside the host.

What was found about netem (kernel 6.18 "-fc" here, iproute2 6.1):

* **This kernel has no sch_netem** (``tc qdisc add ... netem`` answers "Specified qdisc
  kind is unknown"), and there is no module tree to ``modprobe`` it from (a
  Firecracker-style kernel without ``/lib/modules``).  ``tbf`` and ``htb`` are built in,
  and nftables' ``numgen`` expression works.  So here: MTU clamp always works; rate works
  (tbf); loss works through the nftables fallback below; delay, jitter, reordering,
  duplication and corruption *skip* with a reason naming sch_netem.
* **Seeding.** netem draws from the kernel's unseeded ``get_random_u32()`` (prandom in
  older kernels); a run is reproducible in *distribution*, not bit for bit.  Linux 6.6
  added ``TCA_NETEM_PRNG_SEED`` (loss and corruption events follow the seed; delay jitter
  does not), which ``tc ... netem seed N`` sends from iproute2 6.6 on -- iproute2 6.1 here
  does not know the keyword.  :func:`netem_support` probes both; when both exist the
  test's seed is passed, otherwise it is recorded but has no effect.
* **Loss fallback** (no netem): an nftables rule ``oifname IF numgen inc mod N == P drop``
  in the output and forward hooks, one per address family (each rule keeps its own
  counter, as iptables' ``statistic --mode nth`` did per table): exactly every N-th
  packet is dropped, N = round(100 / loss%), and the seed picks the phase P.  That is
  *more* deterministic than netem (bit-exact for a given packet order), and coarser (only
  1/N rates).  nftables, not iptables: ``dev.sh`` installs one firewall tool.

Like netem, every fault applies on *egress* of the given interface; degrade both ends
of a link for a symmetric fault.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import re
from dataclasses import dataclass, field, replace

import pytest

from harness.hosts.base import Host
from harness.hosts.netns import NetnsError, create_netns, remove_netns
from harness.owners import release_owner
from harness.proc import run_local
from ztun.tools import tool

__all__ = [
    "AppliedFaults",
    "Faults",
    "Impairment",
    "NetemSupport",
    "apply_impairment",
    "netem_support",
]

PROBE_NETNS = f"ztprobe{os.getpid()}-netem"
"""Scratch namespace for the capability probe (owner prefix ``ztprobe<pid>-``, so a
leftover is recognised and removed by ``python -m harness cleanup``)."""

TBF_BURST_MIN = 16384
"""Bytes: tbf's bucket must hold at least a few full-size frames or it stalls."""
TBF_BURST_SECONDS = 0.01
TBF_LATENCY = "50ms"
"""Queueing tbf allows before dropping: bounds the added delay of a rate limit."""

NTH_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Impairment:
    """What to do to packets leaving an interface. Percentages are 0-100."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    rate_bps: int | None = None
    limit: int | None = None
    """netem queue length in packets (default 1000: too short for big delay x rate)."""
    mtu: int | None = None
    """Set the interface MTU (the "MTU clamp" a path can impose)."""

    def __post_init__(self) -> None:
        for name in ("loss_pct", "reorder_pct", "duplicate_pct", "corrupt_pct"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name}={value} is not a percentage")
        if self.reorder_pct and not self.delay_ms:
            raise ValueError("netem reorders by sending some packets without delay: set delay_ms")

    @property
    def netem_only(self) -> tuple[str, ...]:
        """Requested features nothing but netem provides."""
        wanted = {
            "delay": self.delay_ms or self.jitter_ms,
            "reorder": self.reorder_pct,
            "duplicate": self.duplicate_pct,
            "corrupt": self.corrupt_pct,
        }
        return tuple(name for name, value in wanted.items() if value)

    def netem_args(self, seed: int | None) -> list[str]:
        args: list[str] = []
        if self.limit is not None:
            args += ["limit", str(self.limit)]
        if self.delay_ms or self.jitter_ms:
            args += ["delay", f"{self.delay_ms}ms"]
            if self.jitter_ms:
                args.append(f"{self.jitter_ms}ms")
        if self.loss_pct:
            args += ["loss", "random", f"{self.loss_pct}%"]
        if self.duplicate_pct:
            args += ["duplicate", f"{self.duplicate_pct}%"]
        if self.reorder_pct:
            args += ["reorder", f"{self.reorder_pct}%"]
        if self.corrupt_pct:
            args += ["corrupt", f"{self.corrupt_pct}%"]
        if self.rate_bps:
            args += ["rate", f"{self.rate_bps}bit"]
        if seed is not None:
            args += ["seed", str(seed)]
        return args


@dataclass(frozen=True, slots=True)
class NetemSupport:
    available: bool
    seed: bool
    reason: str

    def describe(self) -> str:
        if not self.available:
            return f"netem unavailable ({self.reason}); loss via nftables numgen, rate via tbf"
        return "netem available" + (" with seed" if self.seed else " (tc cannot seed it)")


@functools.cache
def netem_support() -> NetemSupport:
    """Probe once per process in a scratch namespace (never the root namespace)."""
    if os.geteuid() != 0:
        return NetemSupport(False, False, "not root")
    try:
        create_netns(PROBE_NETNS)
    except (OSError, NetnsError) as exc:
        return NetemSupport(False, False, f"cannot create probe namespace: {exc}")
    try:

        def tc(*args: str) -> tuple[bool, str]:
            argv = [
                tool("ip"),
                "netns",
                "exec",
                PROBE_NETNS,
                tool("tc"),
                "qdisc",
                "replace",
                "dev",
                "lo",
            ]
            result = run_local([*argv, "root", "netem", *args])
            return result.ok, result.stderr.strip()

        ok, err = tc("delay", "1ms", "seed", "1")
        if ok:
            return NetemSupport(True, True, "")
        ok, err2 = tc("delay", "1ms")
        if ok:
            return NetemSupport(True, False, f"tc does not know 'seed': {err}")
        return NetemSupport(
            False, False, f"sch_netem missing from kernel {platform.release()}: {err2}"
        )
    finally:
        remove_netns(PROBE_NETNS)
        release_owner(PROBE_NETNS.split("-", 1)[0] + "-")


@dataclass
class AppliedFaults:
    """What was configured on one interface, and how to undo it."""

    host: Host
    ifname: str
    impairment: Impairment
    seed: int
    method: str
    """"netem", "nft-nth+tbf", "tbf", "mtu"... -- reported in failure output."""
    undo: list[list[str]] = field(default_factory=list)

    def remove(self) -> None:
        for argv in reversed(self.undo):
            self.host.run(argv)
        self.undo.clear()

    def describe(self) -> str:
        return f"{self.ifname}: {self.impairment} via {self.method} (seed {self.seed})"


def _tbf_args(rate_bps: int) -> list[str]:
    burst = max(TBF_BURST_MIN, int(rate_bps / 8 * TBF_BURST_SECONDS))
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst), "latency", TBF_LATENCY]


def _loss_table(ifname: str) -> str:
    """The nftables table holding the loss rules of one interface (one per interface, so
    two degraded interfaces of a host are undone independently)."""
    return "ztun_loss_" + re.sub(r"[^A-Za-z0-9_]", "_", ifname)


def _nth_loss_script(table: str, ifname: str, every: int, phase: int) -> str:
    """Drop exactly one packet in ``every`` leaving ``ifname`` (the ``phase``-th of each run).

    Each rule's ``numgen inc`` has its own counter, so IPv4 and IPv6, output and forward
    are counted apart (as iptables' and ip6tables' nth rules were): IPv6 neighbour
    discovery never shifts which IPv4 packet is dropped.
    """
    rule = f'oifname "{ifname}" numgen inc mod {every} == {phase} drop'
    chains = "".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n"
        f"    meta nfproto ipv4 {rule}\n    meta nfproto ipv6 {rule}\n  }}\n"
        for hook in ("output", "forward")
    )
    return f"table inet {table} {{\n{chains}}}\n"


def apply_impairment(host: Host, ifname: str, imp: Impairment, *, seed: int) -> AppliedFaults:
    """Configure ``imp`` on egress of ``ifname``; skips the test if it cannot be done."""
    applied = AppliedFaults(host, ifname, imp, seed, method="")
    methods: list[str] = []
    if imp.mtu is not None:
        old = host.run([tool("cat"), f"/sys/class/net/{ifname}/mtu"], check=True).stdout.strip()
        host.run([tool("ip"), "link", "set", "dev", ifname, "mtu", str(imp.mtu)], check=True)
        applied.undo.append([tool("ip"), "link", "set", "dev", ifname, "mtu", old])
        methods.append("mtu")
    shaping = replace(imp, mtu=None)
    if shaping == Impairment():
        applied.method = "+".join(methods)
        return applied
    support = netem_support()
    qdisc_del = [tool("tc"), "qdisc", "del", "dev", ifname, "root"]
    if support.available:
        args = shaping.netem_args(seed if support.seed else None)
        host.run(
            [tool("tc"), "qdisc", "replace", "dev", ifname, "root", "netem", *args], check=True
        )
        applied.undo.append(qdisc_del)
        methods.append("netem" + ("(seeded)" if support.seed else ""))
    else:
        if shaping.netem_only:
            applied.remove()
            pytest.skip(f"{', '.join(shaping.netem_only)} need sch_netem: {support.reason}")
        if shaping.loss_pct:
            every = min(NTH_MAX, max(1, round(100.0 / shaping.loss_pct)))
            phase = random.Random(seed).randrange(every)
            table = _loss_table(ifname)
            host.run(
                [tool("nft"), "-f", "-"],
                input=_nth_loss_script(table, ifname, every, phase),
                check=True,
            )
            applied.undo.append([tool("nft"), "delete", "table", "inet", table])
            methods.append(f"nft-nth(every {every}, phase {phase})")
        if shaping.rate_bps:
            host.run(
                [
                    tool("tc"),
                    "qdisc",
                    "replace",
                    "dev",
                    ifname,
                    "root",
                    *_tbf_args(shaping.rate_bps),
                ],
                check=True,
            )
            applied.undo.append(qdisc_del)
            methods.append("tbf")
    applied.method = "+".join(methods)
    return applied


class Faults:
    """The ``netem`` fixture: ``netem(host, ifname, loss_pct=1, delay_ms=20, ...)``.

    Seeds come from the test's RNG, so a run is repeatable with ``--seed``; everything
    applied is removed at teardown (a VM host outlives the test, a namespace does not).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.applied: list[AppliedFaults] = []

    def __call__(
        self, host: Host, ifname: str, impairment: Impairment | None = None, **params: float
    ) -> AppliedFaults:
        imp = impairment if impairment is not None else Impairment(**params)  # type: ignore[arg-type]
        applied = apply_impairment(host, ifname, imp, seed=self._rng.getrandbits(32))
        self.applied.append(applied)
        return applied

    @property
    def support(self) -> NetemSupport:
        return netem_support()

    def clear(self) -> None:
        while self.applied:
            self.applied.pop().remove()
