"""The `bench` subcommand's flags, kept beside the bench so `ztun/cli.py` only wires it in."""

from __future__ import annotations

import argparse
from typing import Any

from .options import QUICK_SYSTEMS, QUICK_TESTS, SYSTEMS, TESTS, BenchOptions, parse_names

MAX_REPS = 100
TIME_LIMIT_RANGE = (10.0, 86400.0)
NO_FILE = ("", "none", "-")


def _names(known: tuple[str, ...], what: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, ...]:
        try:
            return parse_names(text, known, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _reps(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_REPS:
        raise argparse.ArgumentTypeError(f"repetitions {text!r}: give a whole number 1..{MAX_REPS}")
    return int(text)


def _seconds(text: str) -> float:
    low, high = TIME_LIMIT_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"time limit {text!r} is not a number of seconds"
        ) from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"time limit {text} is out of range [{low:g}, {high:g}] s")
    return value


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    bench: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="measure ztun beside direct routing, a SOCKS5 app and sing-box",
        description="Build throwaway client/proxy/server namespaces, start danted, sing-box's "
        "socks inbound, iperf3 and nginx, and measure each system (interleaved per repetition): "
        "TCP bulk, new connections/s, request/response, UDP, the tun2socks's CPU per GB and "
        "memory. Prints a table (median, min-max, ratios ztun/system) and writes JSON and a "
        "PNG. Needs root.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"one repetition, short loads, systems {','.join(QUICK_SYSTEMS)}, figures "
        f"{','.join(QUICK_TESTS)} (under 2 minutes)",
    )
    bench.add_argument(
        "--reps", type=_reps, default=None, metavar="N", help="repetitions (default 3, --quick 1)"
    )
    bench.add_argument(
        "--systems",
        type=_names(SYSTEMS, "system"),
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    bench.add_argument(
        "--tests",
        type=_names(TESTS, "test"),
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(TESTS)}",
    )
    bench.add_argument(
        "--json",
        default="bench.json",
        metavar="PATH",
        help="where to write the results (default %(default)s; 'none' to skip)",
    )
    bench.add_argument(
        "--png",
        default="bench.png",
        metavar="PATH",
        help="chart of the ratios (default %(default)s; 'none' to skip; needs matplotlib)",
    )
    bench.add_argument(
        "--time-limit",
        type=_seconds,
        default=None,
        metavar="S",
        help="bound on the whole run; figures that would pass it are skipped "
        "(default 3600, --quick 110)",
    )
    bench.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="record a py-spy profile of ztun during each figure into DIR (collapsed "
        "stacks and a summary per figure; needs the bench extra's py-spy)",
    )
    return bench


def options_from(ns: argparse.Namespace) -> BenchOptions:
    return BenchOptions.make(
        quick=ns.quick,
        reps=ns.reps,
        systems=ns.systems,
        tests=ns.tests,
        json_path=None if ns.json.lower() in NO_FILE else ns.json,
        png_path=None if ns.png.lower() in NO_FILE else ns.png,
        time_limit=ns.time_limit,
        profile_dir=ns.profile,
    )


def cmd_bench(ns: argparse.Namespace) -> int:
    from .runner import run_bench

    return run_bench(options_from(ns))
