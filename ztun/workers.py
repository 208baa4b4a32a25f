"""`ztun run --workers N`: one process per queue of a multi-queue TUN.

Each worker is a whole engine (stack, listeners, relays, UDP associations) on its own
queue, so N cores share the data path with no state shared between them. That works
only if both directions of a flow come out of the same queue, and the kernel's default
queue choice (a flow hash, remembered for a few seconds) cannot promise that: the NAT
hairpin makes a flow's two halves two different 5-tuples. So ztun steers with its own
eBPF program (`ztun.tun.steering`), a pure function of the packet:

- the app's packets go to queue `(source port ^ source address) % N` -- the same for every
  packet of a TCP flow and of a UDP full-cone session (keyed by source);
- the listener's answers (destination `peer:nat_port`) go to queue `nat_port % N`, and
  worker k hands out only NAT ports with `port % N == k` (`TcpNatTable` shards), so they
  reach the worker that rewrote the flow's SYN;
- with fake-IP DNS, queries and flows to the fake ranges go to worker 0, the only one
  with the pool (ICMP and the unparseable go there too).

The parent keeps the device (its own queue detached, so no packet waits on it), the
routes and the nftables redirect; it starts the workers, reports ready when all are, and
stops them all when one dies or a signal comes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .options import RunOptions

log = logging.getLogger("ztun")

TUNSETQUEUE = 0x400454D9
IFF_DETACH_QUEUE = 0x0400
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE = 10.0  # seconds a worker gets to close its flows before SIGKILL
READY_TIMEOUT = 30.0


@dataclass
class WorkerRole:
    """What one engine is within `ztun run`: worker `index` of `count` (1: the only one)."""

    index: int = 0
    count: int = 1
    redirect_listeners: list[socket.socket] | None = None
    on_ready: Callable[[], None] | None = None

    @property
    def alone(self) -> bool:
        """A single engine does what the parent does for workers (nftables redirect)."""
        return self.count == 1

    @property
    def primary(self) -> bool:
        """Worker 0 holds process-wide state: the fake-IP pool and its state file."""
        return self.index == 0

    @property
    def nat_shard(self) -> tuple[int, int]:
        return self.index, self.count


def detach_queue(fd: int) -> None:
    """Take this descriptor's queue out of the device (it keeps the device alive)."""
    ifr = struct.pack("16sH22x", b"", IFF_DETACH_QUEUE)
    fcntl.ioctl(fd, TUNSETQUEUE, ifr)


def steering_for(opts: RunOptions) -> bytes:
    from .dns import DnsMode
    from .stack import hairpin_peer
    from .tun.steering import steering_program

    dns = opts.config.dns
    fake_ip = dns.mode is DnsMode.FAKE_IP
    pinned = [net for net in (dns.fake_ip_range, dns.fake_ip6_range) if net] if fake_ip else []
    program: bytes = steering_program(
        peer4=hairpin_peer(opts.inet4).packed if opts.inet4 else None,
        peer6=hairpin_peer(opts.inet6).packed if opts.inet6 else None,
        pinned=pinned,
        pin_dns=fake_ip,
    )
    return program


def run_workers(opts: RunOptions, device: Any, serve: Callable[[Any, WorkerRole], int]) -> int:
    """Start `opts.workers` workers, each running `serve(queue, role)`; exit code: 0 when
    stopped by a signal with every worker clean, else 1."""
    from .tun.steering import attach, load_program

    count = opts.workers
    try:
        prog_fd = load_program(steering_for(opts))
        try:
            attach(device.fileno(), prog_fd)  # the device holds the program from here on
        finally:
            os.close(prog_fd)
        # Detach ours first: the kernel numbers queues in attach order and fills a
        # detached slot with the last queue, so only this order makes queues[k] queue k.
        detach_queue(device.fileno())
        queues = [device.open_queue() for _ in range(count)]
    except OSError as exc:
        log.error("cannot set up %d TUN queues with eBPF steering: %s", count, exc)
        return 1
    redirect_listeners = None
    if opts.redirect:
        from .engine import bind_redirect_listeners

        redirect_listeners = bind_redirect_listeners()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in pids:
            _kill(pid, signal.SIGTERM)

    # Before the first fork: a signal in between must reach the workers, not kill us
    # with routes and device left behind.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    ready_read, ready_write = os.pipe()
    pids: dict[int, int] = {}
    try:
        for index, queue in enumerate(queues):
            role = WorkerRole(index, count, redirect_listeners)
            others = [q.fileno() for q in queues if q is not queue] + [device.fileno(), ready_read]
            pids[_fork_worker(role, queue, others, ready_write, serve)] = index
        os.close(ready_write)
        ready_write = -1
        for queue in queues:
            queue.close()  # the workers hold them now
        return _supervise(opts, device, pids, ready_read, redirect_listeners, lambda: stopping)
    finally:
        for fd in (ready_read, ready_write):
            if fd >= 0:
                os.close(fd)
        for sock in redirect_listeners or ():
            sock.close()
        _stop(pids)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fork_worker(
    role: WorkerRole,
    queue: Any,
    inherited: list[int],
    ready_write: int,
    serve: Callable[[Any, WorkerRole], int],
) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: it must never return into the parent's code (whose `finally` blocks
    # restore routes and remove the device), so every path ends in os._exit.
    code = 1
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for fd in inherited:  # the other queues, the parent's own descriptor
            os.close(fd)
        _tag_log_lines(role.index)

        def ready() -> None:
            os.write(ready_write, bytes((role.index,)))
            os.close(ready_write)

        role.on_ready = ready
        code = serve(queue, role)
    except BaseException:  # report anything, then leave without unwinding
        log.exception("worker %d failed", role.index)
    finally:
        logging.shutdown()
        os._exit(code)


def _tag_log_lines(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
        )


def _supervise(
    opts: RunOptions,
    device: Any,
    pids: dict[int, int],
    ready_read: int,
    redirect_listeners: list[socket.socket] | None,
    stopping: Callable[[], bool],
) -> int:
    """Wait for every worker's ready byte, then for a signal or a worker's end."""
    pidfds = {os.pidfd_open(pid): pid for pid in pids}
    try:
        if not _await_ready(ready_read, len(pids), pidfds):
            return 1
        nft_port = None
        if opts.redirect and redirect_listeners:
            from .redirect import RedirectError, install

            try:
                install(device.name, redirect_listeners[0].getsockname()[1])
                nft_port = redirect_listeners[0].getsockname()[1]
            except (RedirectError, OSError, ValueError) as exc:
                log.error("%s", exc)
                return 1
        try:
            log.info(
                "ztun ready device=%s workers=%d steering=ebpf redirect=%s",
                device.name,
                len(pids),
                f"on:{nft_port}" if nft_port else "off",
            )
            return _await_workers(pids, pidfds, stopping)
        finally:
            if nft_port:
                from .redirect import remove

                remove(device.name)
    finally:
        for fd in pidfds:
            os.close(fd)


def _await_ready(ready_read: int, count: int, pidfds: dict[int, int]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    seen = 0
    while seen < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.error("workers not ready after %.0f s", READY_TIMEOUT)
            return False
        readable, _, _ = select.select([ready_read, *pidfds], [], [], remaining)
        if ready_read in readable:
            got = os.read(ready_read, count)
            if not got:
                log.error("a worker ended before it was ready")
                return False
            seen += len(got)
        elif readable:
            log.error("worker pid %d ended before it was ready", pidfds[readable[0]])
            return False
    return True


def _await_workers(
    pids: dict[int, int], pidfds: dict[int, int], stopping: Callable[[], bool]
) -> int:
    """Until every worker has ended; the first to end unasked stops the rest."""
    worst = 0
    live = dict(pidfds)
    while live:
        readable, _, _ = select.select(list(live), [], [])
        for fd in readable:
            pid = live.pop(fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            index = pids.pop(pid)
            if not stopping():
                log.error("worker %d (pid %d) ended with %d: stopping the others", index, pid, code)
                worst = 1
                for other in pids:
                    _kill(other, signal.SIGTERM)
            elif code != 0:
                worst = 1
    return worst


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # ended, not yet reaped: fine
        os.kill(pid, sig)


def _stop(pids: dict[int, int]) -> None:
    """Whatever is still running (an error path): SIGTERM, a grace period, SIGKILL."""
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for pid in pids:
        pidfd = os.pidfd_open(pid)  # a pid not yet reaped is ours: this cannot race
        try:
            select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            log.error("worker pid %d ignored SIGTERM for %.0f s: killed", pid, STOP_GRACE)
            _kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    pids.clear()
