"""`ztun bench`: ztun beside direct routing, a SOCKS5-speaking app and sing-box, in one run.

Heavy imports (matplotlib) happen only when a PNG is written.
"""

from .options import (
    QUICK_SYSTEMS,
    QUICK_TESTS,
    SYSTEMS,
    TESTS,
    BenchOptions,
    Durations,
    parse_names,
)
from .runner import run_bench
from .topology import PREFIX

__all__ = [
    "PREFIX",
    "QUICK_SYSTEMS",
    "QUICK_TESTS",
    "SYSTEMS",
    "TESTS",
    "BenchOptions",
    "Durations",
    "parse_names",
    "run_bench",
]
