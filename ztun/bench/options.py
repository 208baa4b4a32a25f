"""What `ztun bench` is asked to measure: systems, figures, repetitions and time bounds.

One frozen model for the CLI flags so the runner, the report and the JSON agree on names.
Durations live here (not in the figure code) because `--quick` changes them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Every system the bench knows, in the order the table shows them. `direct` is the
#: physical limit (kernel routing, no TUN, no proxy), `socks-only` the proxy's own
#: ceiling (the app speaks SOCKS5 itself), `socks-relay` that ceiling with one loopback
#: relay hop added (the floor of any design that ends the app's TCP and relays it), then
#: the tun2socks implementations.
SYSTEMS: tuple[str, ...] = (
    "direct",
    "socks-only",
    "socks-relay",
    "ztun",
    "ztun-stack",
    "ztun-redirect",
    "ztun-w2",
    "ztun-portable",
    "sing-box-system",
    "sing-box-gvisor",
    "sing-box-mixed",
)
#: Every figure, in the order they run within one system. `rss` restarts the system
#: against the holding proxy, so it runs last.
TESTS: tuple[str, ...] = (
    "tcp-1-up",
    "tcp-1-down",
    "tcp-4-up",
    "tcp-4-down",
    "conn",
    "rr",
    "udp-200m",
    "udp-1g",
    "udp-burst",
    "udp-burst-danted",
    "rss",
)
#: `--quick`: one repetition of a subset, short durations; the whole run stays under 2 min.
QUICK_SYSTEMS: tuple[str, ...] = (
    "direct",
    "socks-only",
    "ztun",
    "ztun-redirect",
    "sing-box-system",
)
QUICK_TESTS: tuple[str, ...] = ("tcp-1-up", "tcp-1-down", "conn", "rr", "udp-1g", "rss")

DEFAULT_REPS = 3
DEFAULT_TIME_LIMIT = 3600.0  # seconds for the whole run; a full default run takes ~20 min


@dataclass(frozen=True, slots=True)
class Durations:
    """How long each load runs; iperf3 omits its first second (slow start, ARP, NAT setup)."""

    iperf_seconds: float = 6.0
    iperf_omit: int = 1
    conn_requests: int = 5000  # ab -n: a count, not a time, so every system does the same work
    conn_concurrency: int = 16
    rr_seconds: float = 5.0
    held_counts: tuple[int, ...] = (1000, 10000)
    held_open_seconds: float = 90.0  # bound on opening the largest batch of idle connections
    burst_flows: int = 3000  # udp-burst: new UDP flows, 200 every 10 ms


QUICK_DURATIONS = Durations(
    iperf_seconds=2.0,
    iperf_omit=0,
    conn_requests=2000,
    rr_seconds=2.0,
    held_counts=(1000,),
    held_open_seconds=30.0,
)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    reps: int = DEFAULT_REPS
    systems: tuple[str, ...] = SYSTEMS
    tests: tuple[str, ...] = TESTS
    json_path: str | None = "bench.json"
    png_path: str | None = "bench.png"
    time_limit: float = DEFAULT_TIME_LIMIT
    quick: bool = False
    durations: Durations = field(default_factory=Durations)
    profile_dir: str | None = None  # py-spy profiles of ztun per figure (bench.profile)

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        reps: int | None = None,
        systems: tuple[str, ...] | None = None,
        tests: tuple[str, ...] | None = None,
        json_path: str | None = "bench.json",
        png_path: str | None = "bench.png",
        time_limit: float | None = None,
        profile_dir: str | None = None,
    ) -> BenchOptions:
        """Fill what the user left out from the profile (`--quick` or full)."""
        return cls(
            reps=reps if reps is not None else (1 if quick else DEFAULT_REPS),
            systems=systems or (QUICK_SYSTEMS if quick else SYSTEMS),
            tests=tests or (QUICK_TESTS if quick else TESTS),
            json_path=json_path,
            png_path=png_path,
            time_limit=time_limit
            if time_limit is not None
            else (110.0 if quick else DEFAULT_TIME_LIMIT),
            quick=quick,
            durations=QUICK_DURATIONS if quick else Durations(),
            profile_dir=profile_dir,
        )


def parse_names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated subset of `known`, in `known`'s order; ValueError names the bad one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {','.join(known)}"
        )
    return tuple(n for n in known if n in names)
