"""``ztun-harness certify``: run the shipped conformance suite against one implementation.

It runs ``python -m pytest --pyargs harness.suite`` with the options a certification needs and none
of the surroundings: the configuration of whatever project the current directory
belongs to is ignored (``-c /dev/null``), nothing is cached, and the report and the
evidence of every failure land in one folder (``--report DIR``: report.json, report.md,
report.html and artifacts/). So it runs the same from an installed wheel in any
directory as from a checkout.

Exit status: 0 when no required behaviour failed or errored, 1 otherwise (a leak the
harness found counts: the run was not clean), 2 for a usage error or a selection that
runs nothing -- also when every selected behaviour was skipped (an implementation that
cannot be found or started skips them all: that is no certification). Otherwise skips and
optional behaviours never change it (pytest sees an optional behaviour as a non-strict
xfail; see harness.conformance).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.impls import AdapterChoice

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NO_TESTS_COLLECTED = 5
"""pytest.ExitCode.NO_TESTS_COLLECTED, without importing pytest to name it."""
SUITE = "harness.suite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.plugin import SINGLE_HOSTS, TOPOLOGIES, add_adapter_options

    adapter = parser.add_argument_group("implementation under test")
    add_adapter_options(adapter.add_argument)
    run = parser.add_argument_group("run")
    run.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="netns",
        help="netns: client -- proxy -- server namespaces (Linux, default); single: one "
        "host, targets in the documentation ranges (on Linux a namespace of its own)",
    )
    run.add_argument(
        "--single-host",
        choices=SINGLE_HOSTS,
        default="auto",
        help="single topology: a namespace per behaviour (auto on Linux) or this machine "
        "(local: auto elsewhere; on Linux only from inside a namespace)",
    )
    run.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="folder for report.json/.md/.html and the artifacts of failures "
        "(default: ./report-NAME)",
    )
    run.add_argument(
        "-n",
        dest="workers",
        metavar="N",
        type=int,
        default=None,
        help="run behaviours in N processes (pytest-xdist; default: one process; one at a time "
        "on a local single host, which they would share)",
    )
    run.add_argument("-k", dest="select", metavar="EXPR", help="only behaviours matching EXPR")
    run.add_argument(
        "-m", dest="marks", metavar="EXPR", help="only behaviours whose marks match (not slow)"
    )
    run.add_argument("--seed", type=int, help="the run's seed (default: random, printed)")
    run.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply time bounds and timeouts by F >= 1 (a slow or emulated machine)",
    )
    run.add_argument(
        "--keep-pcaps", action="store_true", help="keep evidence of passing behaviours too"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="one line per behaviour")


def _adapter_argv(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for option in (
        "tun2socks",
        "tun2socks_command",
        "tun2socks_config_template",
        "tun2socks_ready",
        "tun2socks_name",
        "tun2socks_version_command",
    ):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    if args.tun2socks_harness_configures_device:
        argv.append("--tun2socks-harness-configures-device")
    return argv


def pytest_argv(args: argparse.Namespace, report: Path) -> list[str]:
    """The pytest command line that runs the certification (without ``pytest``)."""
    argv = [
        "--pyargs",
        SUITE,
        "-c",
        os.devnull,  # not the configuration of the project we happen to stand in
        "--rootdir",
        str(report),
        "-p",
        "no:cacheprovider",
        "--report",
        str(report),
        "--artifacts",
        str(report / "artifacts"),
        "--topology",
        args.topology,
        "--single-host",
        args.single_host,
        "--time-scale",
        repr(args.time_scale),
        "-r",
        "fEs",
        *_adapter_argv(args),
    ]
    if args.workers is not None:
        argv += ["-n", str(args.workers)]
    if args.select:
        argv += ["-k", args.select]
    if args.marks:
        argv += ["-m", args.marks]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.keep_pcaps:
        argv.append("--keep-pcaps")
    argv.append("-v" if args.verbose else "-q")
    return argv


def adapter_choice(args: argparse.Namespace) -> AdapterChoice:
    """The implementation the options name; ValueError/TypeError say what is wrong."""
    from harness.impls import choose_adapter

    return choose_adapter(
        args.tun2socks,
        command=args.tun2socks_command,
        config_template=args.tun2socks_config_template,
        ready=args.tun2socks_ready,
        name=args.tun2socks_name,
        version_command=args.tun2socks_version_command,
        harness_configures_device=args.tun2socks_harness_configures_device,
    )


def usage_problem(args: argparse.Namespace) -> str | None:
    """What makes this command line unusable, before any test starts."""
    try:
        adapter_choice(args)
    except (ValueError, TypeError) as exc:
        return str(exc)
    if args.single_host != "auto" and args.topology != "single":
        # Else ignored: the whole netns suite runs instead of what was asked for.
        return f"--single-host {args.single_host} applies only to --topology single"
    if not args.time_scale >= 1.0:
        return f"--time-scale {args.time_scale!r}: must be >= 1"
    if args.workers is not None:
        if args.workers < 0:
            return "-n must be >= 0"
        try:
            import xdist  # noqa: F401
        except ImportError:
            return "-n needs pytest-xdist (pip install 'ztun[harness]')"
    if sys.platform == "linux" and os.geteuid() != 0:
        return "certify needs root on Linux: it creates namespaces and TUN devices"
    return None


def _report_dir(args: argparse.Namespace) -> Path:
    if args.report is not None:
        return Path(args.report).resolve()
    name = adapter_choice(args).name
    return Path.cwd() / f"report-{re.sub(r'[^A-Za-z0-9_.+-]', '-', name)}"


def exit_status(pytest_status: int) -> int:
    """pytest's exit code -> certify's (see the module docstring)."""
    import pytest

    if pytest_status == pytest.ExitCode.OK:
        return EXIT_OK
    if pytest_status in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        return EXIT_USAGE
    return EXIT_FAILED


def nothing_ran(report: Path, since: float) -> str | None:
    """Why the run in ``report`` certified nothing: every behaviour it wrote a result for
    was skipped (the first skip's reason says why); None when one passed, failed or
    errored, or when the run wrote no report.json after ``since`` (nothing collected)."""
    from harness import report as report_mod

    path = report / report_mod.JSON_NAME
    try:
        if path.stat().st_mtime < since:
            return None  # an older run's report: this one wrote none
        document, _ = report_mod.load(path)
    except (OSError, report_mod.ReportError):
        return None
    for name, column in document["implementations"].items():
        if report_mod.only_skips(document, name):
            first = next(iter(column["results"].values()))
            return f"every behaviour was skipped ({first['reason']})"
    return None


def _error(message: str) -> None:
    print(f"ztun-harness certify: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem is not None:
        _error(problem)
        return EXIT_USAGE
    report = _report_dir(args)
    report.mkdir(parents=True, exist_ok=True)
    # A child process, not pytest.main(): pytest must import the harness itself (this
    # process already has, so it could not rewrite its assertions), and the run gets a
    # clean interpreter whatever imported us.
    argv = [sys.executable, "-m", "pytest", *pytest_argv(args, report)]
    started = time.time()
    try:
        status = subprocess.run(argv, check=False).returncode
    except KeyboardInterrupt:  # the child got the SIGINT too and has cleaned up
        return EXIT_FAILED
    code = exit_status(status)
    if status == NO_TESTS_COLLECTED:  # pytest said only "N deselected"
        _error("no behaviour selected (-k/-m matched none)")
    elif code == EXIT_OK and (why := nothing_ran(report, started)) is not None:
        _error(f"nothing certified: {why}")
        return EXIT_USAGE
    return code
