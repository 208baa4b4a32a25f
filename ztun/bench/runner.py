"""`ztun bench`: build the namespaces, start the servers, run every figure for every system,
interleaved per repetition, and report.

Interleaving: each repetition runs every system once (in an order rotated per repetition),
so a noisy minute on this shared 2-core machine hits all systems alike rather than one.
Cleanup is a defer stack (contextlib.ExitStack) run in reverse on success, failure, Ctrl-C
and SIGTERM, and verified: the namespaces must really be gone.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, TextIO

from ztun.tools import TOOLS, apt_install_line, missing, tool

from ..proc import ProcError
from . import report
from .figures import FIGURES, Ctx, NotApplicable, nominal_seconds, timeout_for
from .options import BenchOptions
from .profile import profile_path, profiled
from .report import RunRecord
from .servers import Servers, sing_box_path
from .systems import Env, System, make_system
from .topology import new_topology

NOFILE = 262144  # 10,000 held connections cost the client, ztun and sing-box 2-3 fds each
ERROR_CHARS = 600  # of an error message kept in the table's log lines (the JSON keeps all)

# Which Debian package brings each tool (for the "install these" message and the JSON).
BENCH_TOOLS = ("iperf3", "nginx", "danted", "ab", "wrk", "proxychains4", "ss")
"""What the bench may start (ztun.tools knows their packages)."""


def _needed_tools(opts: BenchOptions) -> list[str]:
    tools = ["iperf3", "nginx", "danted", "ss"]
    if "conn" in opts.tests:
        tools.append("ab")
    if "rr" in opts.tests:
        tools.append("wrk")
    if "socks-only" in opts.systems or "socks-relay" in opts.systems:
        tools.append("proxychains4")
    return tools


def _preflight(opts: BenchOptions, err: TextIO) -> bool:
    if os.geteuid() != 0:
        print("ztun bench: needs root (it creates network namespaces and TUN devices)", file=err)
        return False
    absent = missing(_needed_tools(opts))
    if absent:
        print(
            f"ztun bench: missing {', '.join(t.name for t in absent)}; install them: "
            f"{apt_install_line(absent)} (./dev.sh setup does)",
            file=err,
        )
        return False
    if (
        any(s.startswith("sing-box") for s in opts.systems)
        or "udp-200m" in opts.tests
        or "udp-1g" in opts.tests
        or "udp-burst" in opts.tests
        or "rss" in opts.tests
    ):
        try:
            sing_box_path()
        except ProcError as exc:
            print(f"ztun bench: {exc}", file=err)
            return False
    return True


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(NOFILE, hard if hard != resource.RLIM_INFINITY else NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the defer stack removes the namespaces either way.

    Only in this process: pyroute2 forks helper children (NetNS, netns.create) that inherit
    Python's handlers and are stopped with SIGTERM; a child that unwound our stack would run
    our teardown and delete the namespaces under the live bench. Children exit at once.
    """
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _owner_only(fn: Callable[[], object]) -> Callable[[], None]:
    """A teardown step that does nothing in a forked child (second line of the same defence)."""
    owner = os.getpid()

    def guarded() -> None:
        if os.getpid() == owner:
            fn()

    return guarded


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    pkgs = sorted({TOOLS[name].package for name in BENCH_TOOLS} - {"iproute2"})
    res = subprocess.run(
        [tool("dpkg-query"), "-W", "-f", "${Package} ${Version}\\n", *pkgs],
        capture_output=True,
        text=True,
        timeout=10,
    )
    for line in res.stdout.splitlines():
        name, _, version = line.partition(" ")
        if version:
            out[name] = version
    with contextlib.suppress(ProcError, OSError, subprocess.SubprocessError):
        res = subprocess.run(
            [sing_box_path(), "version"], capture_output=True, text=True, timeout=10
        )
        out["sing-box"] = res.stdout.split("\n", 1)[0].removeprefix("sing-box version ").strip()
    from .. import __version__

    out["ztun"] = __version__
    return out


def _environment() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "versions": _versions(),
        "tcp_socks_server": "danted (dante-server), log: error",
        "udp_socks_server": "sing-box socks inbound (danted drops sing-box's UDP: it declares "
        "[::1]:0 in UDP ASSOCIATE and danted accepts datagrams only from the declared address); "
        "udp-burst-danted: danted, ztun restarted with --udp-proxy to it",
        "udp_burst": "ztun.bench.udpburst: N new sockets, one 64-byte datagram each, 200 every "
        "10 ms, echoes awaited 20 s after the last send",
        "held_connections_proxy": "holdsocks (answers CONNECT and holds: one fd per connection)",
        "socks_only_client": "proxychains4 (LD_PRELOAD; SOCKS5 handshake inside connect(), "
        "then the app's own data path)",
        "socks_relay_hop": "ztun.bench.relay_hop: proxychains4 to a loopback listener that "
        "relays each connection to danted with ztun's splice relay (no TUN, no stack)",
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "tun_mtu": {"ztun": 1500, "sing-box": "default (9000)"},
        "load_tools": {
            "tcp/udp": "iperf3 -J",
            "conn": "ab (no keep-alive, 1 KiB)",
            "rr": "wrk -c1 -t1 --latency",
        },
    }


class Progress:
    """One status line that rewrites itself on a terminal (plain lines otherwise)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self.done:
            return f"{elapsed:.0f}s elapsed"
        left = elapsed / self.done * (self.total - self.done)
        return f"{elapsed:.0f}s elapsed, ~{left:.0f}s left"

    def status(self, text: str) -> None:
        line = f"[{self.done + 1:>3}/{self.total}] {text}  ({self._eta()})"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()

    def result(self, record: RunRecord) -> None:
        self.done += 1
        if record.metrics:
            what = " ".join(f"{k}={v:.3g}" for k, v in record.metrics.items())
        else:
            what = (
                (record.not_applicable and f"n/a ({record.not_applicable})")
                or (record.skipped and f"skipped ({record.skipped})")
                or f"FAILED: {(record.error or '')[:ERROR_CHARS]}"
            )
        head = f"[{self.done:>3}/{self.total}] rep {record.rep} {record.system:<16}"
        line = f"{head} {record.test:<10} {what}"
        if record.seconds:
            line += f"  ({record.seconds:.1f}s)"
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()


def _run_one(ctx: Ctx, system: System, rep: int, test: str, deadline: float) -> RunRecord:
    """One figure, bounded by its own timeout and by what is left of the run's time limit."""
    record = RunRecord(rep, system.name, test, load1=round(os.getloadavg()[0], 2))
    left = deadline - time.monotonic()
    if left < nominal_seconds(test, ctx.durations):
        record.skipped = "time limit"
        return record
    timeout = min(timeout_for(test, ctx.durations), left)
    started = time.monotonic()
    try:
        system.check_alive()
        ctx.servers.check_alive()
        out = profile_path(ctx.profile_dir, system.name, test, rep)
        with profiled(system.pid if out is not None else None, out):
            record.metrics = FIGURES[test](ctx, system, timeout)
    except NotApplicable as exc:
        record.not_applicable = str(exc)
    except (ProcError, ValueError, OSError) as exc:
        if time.monotonic() >= deadline:
            record.skipped = "time limit (cut short)"
        else:
            record.error = f"{type(exc).__name__}: {exc}"
    record.seconds = time.monotonic() - started
    return record


def _run_system(
    ctx: Ctx,
    system: System,
    rep: int,
    tests: tuple[str, ...],
    deadline: float,
    progress: Progress,
    runs: list[RunRecord],
) -> None:
    progress.status(f"rep {rep} {system.name}: starting")
    try:
        system.start()
    except (ProcError, OSError) as exc:
        for test in tests:
            record = RunRecord(rep, system.name, test, error=f"start failed: {exc}")
            runs.append(record)
            progress.result(record)
        system.stop()
        return
    try:
        for test in tests:
            progress.status(f"rep {rep} {system.name} {test}")
            record = _run_one(ctx, system, rep, test, deadline)
            runs.append(record)
            progress.result(record)
    finally:
        system.stop()


def _measure(
    opts: BenchOptions, deadline: float, progress: Progress, runs: list[RunRecord], err: TextIO
) -> None:
    """Build, start, run every figure, tear down: the defer stack undoes each step in reverse."""
    with contextlib.ExitStack() as defer:
        workdir = tempfile.mkdtemp(prefix="ztbench-")
        defer.callback(_owner_only(lambda: shutil.rmtree(workdir, ignore_errors=True)))
        topo = new_topology()

        def remove_namespaces() -> None:
            left = topo.teardown()
            if left:
                print(f"ztun bench: could not remove {left}; run `ztun cleanup`", file=err)

        defer.callback(_owner_only(remove_namespaces))
        progress.status("building namespaces and starting servers")
        topo.build()
        servers = Servers(topo, workdir)
        defer.callback(_owner_only(servers.stop))
        servers.start()
        env = Env(topo, workdir)
        ctx = Ctx(env, servers, opts.durations, opts.profile_dir)
        systems = [make_system(name, env) for name in opts.systems]
        for rep in range(1, opts.reps + 1):
            shift = (rep - 1) % len(systems)
            for system in systems[shift:] + systems[:shift]:
                _run_system(ctx, system, rep, opts.tests, deadline, progress, runs)


def run_bench(opts: BenchOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the bench; 0 when it ran (failed figures are in the table and JSON), 1 when it
    could not (not root, a tool missing, the servers would not start), 130 on Ctrl-C."""
    if not _preflight(opts, err):
        return 1
    _raise_nofile()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    runs: list[RunRecord] = []
    interrupted = failed_setup = False
    environment = _environment()
    progress = Progress(opts.reps * len(opts.systems) * len(opts.tests), err)
    print(
        f"ztun bench: {len(opts.systems)} systems x {len(opts.tests)} figures x {opts.reps} "
        f"rep(s), time limit {opts.time_limit:g}s",
        file=err,
        flush=True,
    )
    try:
        with _signals_as_interrupt():
            _measure(opts, started + opts.time_limit, progress, runs, err)
    except KeyboardInterrupt:
        interrupted = True
        print(
            "\nztun bench: interrupted; namespaces removed; reporting what was measured", file=err
        )
    except (ProcError, OSError) as exc:
        failed_setup = True
        print(f"\nztun bench: {type(exc).__name__}: {exc}", file=err)
    elapsed = time.monotonic() - started
    environment["loadavg_at_end"] = list(os.getloadavg())
    complete = not (interrupted or failed_setup) and not any(r.skipped or r.error for r in runs)
    options = {**asdict(opts), "durations": asdict(opts.durations)}
    doc = report.document(
        runs,
        options=options,
        environment=environment,
        started_at=started_at,
        elapsed=elapsed,
        complete=complete,
    )
    print("", file=out)
    print(report.table(runs, opts.systems, opts.tests), file=out)
    print(
        f"\n{elapsed:.0f}s, {sum(1 for r in runs if r.error)} failed, "
        f"{sum(1 for r in runs if r.skipped)} skipped (time limit)",
        file=out,
    )
    if opts.json_path:
        report.write_json(doc, opts.json_path)
        print(f"wrote {opts.json_path}", file=out)
    if opts.png_path:
        why_not = report.write_png(doc, opts.png_path)
        print(f"wrote {opts.png_path}" if why_not is None else f"no PNG: {why_not}", file=out)
    if interrupted:
        return 130
    return 1 if failed_setup else 0
