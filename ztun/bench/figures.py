"""The figures: each runs one load tool from the client against one system and returns numbers.

Every function takes the same `Ctx` and returns `{metric key: value}`; a figure that makes
no sense for a system (UDP through proxychains, memory of a system with no process)
raises `NotApplicable`, which the report shows as "n/a", not as a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ztun.tools import tool

from .. import netns
from ..proc import ProcError, await_condition, run
from . import parse, procstat
from .options import Durations
from .servers import BURST_ECHO_PORT, DANTED_PORT, HOLD_PORT, HTTP_PORT, IPERF_PORT, Servers
from .systems import Env, SingBox, System
from .topology import SERVER_V4
from .udpburst import WAIT as BURST_WAIT

GB = 1e9
UDP_PAYLOAD = 1400  # bytes: fits a 1500 MTU after IP/UDP and the 10-byte SOCKS5 UDP header
TOOL_SLACK = 20.0  # seconds a tool may take beyond its nominal duration (connect, report)
HELD_CONCURRENCY = 256  # connects in flight while opening idle connections
HELD_SETTLE_TIMEOUT = 30.0  # for holdsocks to answer every connection the client opened
HELD_NOMINAL_RATE = 2000.0  # idle connections opened per second, roughly, through a tun2socks
CONN_TIMEOUT, CONN_NOMINAL = 90.0, 8.0  # ab: bound, and its usual length through danted
FD_MARGIN = 300  # descriptors a process needs besides its connections
HELD_TARGET = 10000
HELD_STALL = 5.0  # seconds without a new held connection: the tun2socks holds no more
START_SLACK = 10.0  # seconds to restart a system (rss) before the load begins
BURST_NOMINAL = 5.0  # a 3000-flow burst and its echoes, when all goes well


class NotApplicable(Exception):
    """The figure does not exist for this system; the reason is shown in the JSON."""


@dataclass
class Ctx:
    env: Env
    servers: Servers
    durations: Durations
    profile_dir: str | None = None  # `--profile`: py-spy of ztun per figure


Figure = Callable[[Ctx, System, float], dict[str, float]]


def _client(ctx: Ctx, system: System, argv: list[str], timeout: float) -> str:
    return run(ctx.env.topo.client, [*system.client_prefix, *argv], timeout=timeout).stdout


def _cpu(system: System) -> float | None:
    return procstat.cpu_seconds(system.pid) if system.pid else None


@dataclass(frozen=True, slots=True)
class CpuMark:
    """CPU seconds at the start of a load: the system's processes, the whole machine."""

    system: float | None
    machine: float

    @classmethod
    def now(cls, system: System) -> CpuMark:
        return cls(_cpu(system), procstat.machine_cpu_seconds())

    def spent(self, system: System) -> tuple[float | None, float]:
        """(system, machine) CPU seconds since the mark."""
        after = _cpu(system)
        own = after - self.system if after is not None and self.system is not None else None
        return own, procstat.machine_cpu_seconds() - self.machine


def _per_gb(system: System, before: CpuMark, moved: float) -> dict[str, float]:
    """CPU per GB moved: the system's own, and the machine's (softirq, load tools and
    servers included: the same for every system but the system's share)."""
    own, machine = before.spent(system)
    if moved <= 0:
        return {}
    gb = moved / GB
    return {"machine_cpu_s_per_gb": machine / gb} | (
        {"cpu_s_per_gb": own / gb} if own is not None else {}
    )


def _iperf(ctx: Ctx, system: System, timeout: float, extra: list[str]) -> str:
    d = ctx.durations
    argv = [
        tool("iperf3"),
        "-c",
        SERVER_V4,
        "-p",
        str(IPERF_PORT),
        "-J",
        "-t",
        f"{d.iperf_seconds:g}",
        "--connect-timeout",
        "5000",
        *extra,
    ]
    ctx.servers.fresh_iperf3()
    return _client(ctx, system, argv, timeout)


def tcp_bulk(streams: int, reverse: bool) -> Figure:
    def figure(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
        extra = ["-P", str(streams), "-O", str(ctx.durations.iperf_omit)] + (
            ["-R"] if reverse else []
        )
        before = CpuMark.now(system)
        result = parse.iperf_tcp(_iperf(ctx, system, timeout, extra))
        return {"gbps": result.bits_per_second / 1e9, **_per_gb(system, before, result.bytes_total)}

    return figure


def udp(offered_bps: int) -> Figure:
    def figure(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
        if not system.carries_udp:
            raise NotApplicable("proxychains carries TCP only")
        before = CpuMark.now(system)
        result = parse.iperf_udp(
            _iperf(ctx, system, timeout, ["-u", "-b", str(offered_bps), "-l", str(UDP_PAYLOAD)])
        )
        return {
            "sent_mbps": result.offered_bps / 1e6,
            "delivered_mbps": result.delivered_bps / 1e6,
            "loss_pct": result.loss_percent,
            **_per_gb(system, before, result.bytes_delivered),
        }

    return figure


def udp_burst(via_danted: bool) -> Figure:
    """A burst of new UDP flows (`ztun.bench.udpburst`): how many came back, how soon, and
    the descriptors the tun2socks held for them. UDP goes through sing-box's socks inbound
    (like every UDP figure) or, restarted for this figure alone, through danted."""

    def figure(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
        if not system.carries_udp:
            raise NotApplicable("proxychains carries TCP only")
        if via_danted and isinstance(system, SingBox):
            raise NotApplicable(
                "danted drops sing-box's UDP (it declares [::1]:0 in UDP ASSOCIATE)"
            )
        restart = via_danted and system.pid is not None
        if restart:
            system.stop()
            system.start(udp_port=DANTED_PORT)
        try:
            flows = ctx.durations.burst_flows
            fds_before = procstat.open_fds(system.pid) if system.pid else None
            out = _client(
                ctx,
                system,
                [
                    sys.executable,
                    "-m",
                    "ztun.bench.udpburst",
                    "burst",
                    "--target",
                    f"{SERVER_V4}:{BURST_ECHO_PORT}",
                    "--flows",
                    str(flows),
                ],
                timeout,
            )
            # Sessions live on (idle timeout): what they hold is what the burst cost.
            fds_after = procstat.open_fds(system.pid) if system.pid else None
        finally:
            if restart:
                system.stop()
                system.start()
        result = json.loads(out)
        metrics = {"delivered_pct": float(result["delivered_pct"]), "seconds": result["seconds"]}
        if fds_before is not None and fds_after is not None:
            metrics["fds_per_flow"] = (fds_after - fds_before) / flows
        return metrics

    return figure


def conn(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
    """New connections per second: ab without keep-alive, one 1 KiB GET per connection."""
    d = ctx.durations
    csv_path = os.path.join(ctx.env.workdir, f"ab-{system.name}.csv")
    before = CpuMark.now(system)
    out = _client(
        ctx,
        system,
        [
            tool("ab"),
            "-q",
            "-r",
            "-s",
            "10",
            "-n",
            str(d.conn_requests),
            "-c",
            str(d.conn_concurrency),
            "-e",
            csv_path,
            f"http://{SERVER_V4}:{HTTP_PORT}/1k",
        ],
        timeout,
    )
    with open(csv_path) as f:
        result = parse.ab(out, f.read())
    own, machine = before.spent(system)
    if result.complete == 0:
        raise ProcError("ab completed no request")
    per_conn = {"machine_cpu_ms_per_conn": machine * 1000 / result.complete} | (
        {"cpu_ms_per_conn": own * 1000 / result.complete} if own is not None else {}
    )
    return {
        **per_conn,
        "conn_per_s": result.requests_per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "failed": float(result.failed),
    }


def rr(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
    """Request/response on one kept-alive connection: wrk -c1 -t1 (a C client; no Python in
    the loop to blur the round-trip time)."""
    d = ctx.durations
    out = _client(
        ctx,
        system,
        [
            tool("wrk"),
            "-c1",
            "-t1",
            f"-d{d.rr_seconds:g}s",
            "--latency",
            f"http://{SERVER_V4}:{HTTP_PORT}/1k",
        ],
        timeout,
    )
    result = parse.wrk(out)
    if result.errors:
        raise ProcError(f"wrk saw {result.errors} errors")
    return {
        "rr_per_s": result.requests_per_second,
        "p50_us": result.p50_seconds * 1e6,
        "p99_us": result.p99_seconds * 1e6,
    }


def _open_idle(client_ns: str, count: int, deadline: float) -> list[socket.socket]:
    """Open `count` TCP connections through the system, at most HELD_CONCURRENCY in flight.

    Non-blocking connects multiplexed with selectors: one thread, bounded in time."""
    opened: list[socket.socket] = []
    pending: dict[socket.socket, None] = {}
    failures = 0
    sel = selectors.DefaultSelector()
    try:
        while len(opened) < count:
            if time.monotonic() > deadline:
                raise ProcError(f"opened only {len(opened)} of {count} idle connections in time")
            while len(pending) < HELD_CONCURRENCY and len(opened) + len(pending) < count:
                with netns.in_netns(client_ns):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((SERVER_V4, HOLD_PORT))
                sel.register(sock, selectors.EVENT_WRITE)
                pending[sock] = None
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj  # type: ignore[assignment]
                sel.unregister(sock)
                del pending[sock]
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    sock.close()
                    failures += 1
                    if failures > count // 10 + 10:
                        raise ProcError(f"{failures} idle connections failed to open")
                else:
                    opened.append(sock)
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    finally:
        for sock in pending:
            sock.close()
        sel.close()
    return opened


def held_cap() -> int:
    """How many idle connections the fd limit lets a tun2socks hold: two descriptors per
    connection (the app's side and the proxy's) under the hard RLIMIT_NOFILE (20,000 here)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return HELD_TARGET
    return (hard - FD_MARGIN) // 2


def _hold(ctx: Ctx, system: System, held: list[socket.socket], target: int, deadline: float) -> int:
    """Open idle connections up to `target` and wait until holdsocks has answered them all,
    or until the count stops growing (the tun2socks or the fd limit gave out): how many."""
    open_deadline = min(deadline, time.monotonic() + ctx.durations.held_open_seconds)
    with contextlib.suppress(ProcError):  # what opened is still measured
        held += _open_idle(ctx.env.topo.client, target - len(held), open_deadline)
    last, still_since = -1, time.monotonic()

    def settled() -> bool:
        nonlocal last, still_since
        count = ctx.servers.held()
        if count != last:
            last, still_since = count, time.monotonic()
        return count >= target or time.monotonic() - still_since > HELD_STALL

    with contextlib.suppress(ProcError):
        await_condition(
            settled,
            max(1.0, min(HELD_SETTLE_TIMEOUT, deadline - time.monotonic())),
            "idle connections to settle",
        )
    return ctx.servers.held()


def rss(ctx: Ctx, system: System, timeout: float) -> dict[str, float]:
    """The tun2socks's memory idle, with 1,000 idle connections, and with as many as it holds
    up to 10,000 (the fd limit caps a two-sockets-per-connection design at ~9,850).

    The system is restarted against holdsocks, a proxy that answers CONNECT and holds (one
    descriptor per connection), so the proxy is never the limit. A connection counts once
    holdsocks answered it; memory is read from /proc (the process tree's resident set).
    """
    if system.pid is None or not system.is_tun2socks:
        raise NotApplicable("no tun2socks process")
    deadline = time.monotonic() + timeout
    system.stop()
    system.start(tcp_port=HOLD_PORT)
    pid = system.pid
    assert pid is not None
    idle = procstat.rss_bytes(pid)
    out = {"idle_mib": idle / procstat.MIB}
    held: list[socket.socket] = []
    try:
        for step in ctx.durations.held_counts:
            target = min(step, held_cap())
            count = _hold(ctx, system, held, target, deadline)
            system.check_alive()
            rss_now = procstat.rss_bytes(pid)
            if count >= step:  # a step the fd limit capped is reported as held_max only
                out[f"held_{step}_mib"] = rss_now / procstat.MIB
            if count > 0:
                out["held_max_conns"] = float(count)
                out["held_max_mib"] = rss_now / procstat.MIB
                out["kib_per_conn"] = (rss_now - idle) / count / 1024
            if count < target:
                break  # it holds no more; the larger steps would only repeat this
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
    return out


FIGURES: dict[str, Figure] = {
    "tcp-1-up": tcp_bulk(1, reverse=False),
    "tcp-1-down": tcp_bulk(1, reverse=True),
    "tcp-4-up": tcp_bulk(4, reverse=False),
    "tcp-4-down": tcp_bulk(4, reverse=True),
    "conn": conn,
    "rr": rr,
    "udp-200m": udp(200_000_000),
    "udp-1g": udp(1_000_000_000),
    "udp-burst": udp_burst(via_danted=False),
    "udp-burst-danted": udp_burst(via_danted=True),
    "rss": rss,
}


def timeout_for(test: str, d: Durations) -> float:
    """Per-figure bound: the load's nominal length plus slack (more for the process-heavy ones)."""
    if test.startswith(("tcp-", "udp-")) and not test.startswith("udp-burst"):
        return d.iperf_seconds + d.iperf_omit + TOOL_SLACK
    if test == "conn":
        return CONN_TIMEOUT
    if test == "rr":
        return d.rr_seconds + TOOL_SLACK
    if test == "rss":
        return d.held_open_seconds * len(d.held_counts) + HELD_SETTLE_TIMEOUT + START_SLACK
    if test.startswith("udp-burst"):
        return BURST_WAIT + TOOL_SLACK + 2 * START_SLACK
    raise ValueError(test)


def nominal_seconds(test: str, d: Durations) -> float:
    """What a figure takes when all goes well: a run skips a figure that cannot finish in time."""
    if test.startswith("udp-burst"):
        return BURST_NOMINAL
    if test.startswith(("tcp-", "udp-")):
        return d.iperf_seconds + d.iperf_omit + 1.0
    if test == "conn":
        return CONN_NOMINAL
    if test == "rr":
        return d.rr_seconds + 1.0
    if test == "rss":
        return START_SLACK + sum(d.held_counts) / HELD_NOMINAL_RATE
    raise ValueError(test)
