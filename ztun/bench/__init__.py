"""`ztun bench`: ztun beside direct routing, a SOCKS5-speaking app and sing-box, in one run.

Heavy imports (matplotlib) happen only when a PNG is written; the runner and topology
(asyncio, subprocess machinery) on first use -- `ztun run` builds the bench's flags into
its parser and must not carry the bench itself.
"""

from typing import Any

from .options import (
    QUICK_SYSTEMS,
    QUICK_TESTS,
    SYSTEMS,
    TESTS,
    BenchOptions,
    Durations,
    parse_names,
)

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


def __getattr__(name: str) -> Any:
    if name == "run_bench":
        from .runner import run_bench

        return run_bench
    if name == "PREFIX":
        from .topology import PREFIX

        return PREFIX
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
