"""`ztun run --workers N`: one process per queue of a multi-queue TUN.

Each worker is a whole engine (stack, listeners, relays, UDP associations) on its own
queue, so N cores share the data path with no state shared between them. That works
only if both directions of a flow come out of the same queue, and the kernel's default
queue choice (a flow hash, remembered for a few seconds) cannot promise that: the NAT
hairpin makes a flow's two halves two different 5-tuples. So ztun steers with its own
eBPF program (`ztun.tun.steering`), a pure function of the packet:

- the app's packets go to queue `hash(source address, source port) % N` -- the same for
  every packet of a TCP flow and of a UDP full-cone session (keyed by source);
- the listener's answers (destination `peer:nat_port`) go to queue `nat_port % N`, and
  worker k hands out only NAT ports with `port % N == k` (`TcpNatTable` shards), so they
  reach the worker that rewrote the flow's SYN;
- with fake-IP DNS, queries and flows to the fake ranges go to worker 0, the only one
  with the pool (ICMP and the unparseable go there too); so do all `--redirect`ed
  connections then, as nftables redirects before any steering could see a fake address.

The parent keeps the device (its own queue detached, so no packet waits on it), the
routes and the nftables redirect; it starts the workers, reports ready when all are, and
stops them all when one dies or a signal comes (SIGKILL after STOP_GRACE). A worker
whose parent dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG), so no orphan keeps the
device's queues.
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
from typing import Any, NoReturn

from .options import RunOptions
from .role import WorkerRole

log = logging.getLogger("ztun")

TUNSETQUEUE = 0x400454D9
IFF_DETACH_QUEUE = 0x0400
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# SIGHUP reloads the config, SIGUSR1 reopens the log file: the parent acts for all.
STEER_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
STOP_GRACE = 10.0  # seconds a worker gets to close its flows before SIGKILL
PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 30.0


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


def run_workers(
    opts: RunOptions,
    device: Any,
    serve: Callable[[Any, WorkerRole], int],
    *,
    accelerations: dict[str, Any] | None = None,
) -> int:
    """Start `opts.workers` workers, each running `serve(queue, role)`; exit code: 0 when
    stopped by a signal with every worker clean, else 1."""
    from .tun.steering import load_program

    count = opts.workers
    try:
        os.close(os.pidfd_open(os.getpid()))  # how the parent waits (Linux 5.3+)
    except (AttributeError, OSError) as exc:
        log.error("--workers needs pidfd_open (Linux 5.3 or later): %s", exc)
        return 1
    queues: list[Any] = []
    redirect_listeners: list[socket.socket] | None = None
    try:
        prog_fd = load_program(steering_for(opts))
        try:
            device.set_steering(prog_fd)  # the device holds the program from here on
        finally:
            os.close(prog_fd)
        # Detach ours first: the kernel numbers queues in attach order and fills a
        # detached slot with the last queue, so only this order makes queues[k] queue k.
        detach_queue(device.fileno())
        for _ in range(count):
            queues.append(device.open_queue())
        if opts.redirect:
            from .engine import bind_redirect_listeners

            redirect_listeners = bind_redirect_listeners()
    except OSError as exc:
        log.error("cannot set up %d TUN queues with eBPF steering: %s", count, exc)
        for queue in queues:
            queue.close()
        return 1
    try:
        workers = _Workers(opts, device, queues, redirect_listeners, serve)
        workers.accelerations = accelerations or {}  # what `ztun status` shows
        return workers.run()
    finally:
        for sock in redirect_listeners or ():
            sock.close()


class _Workers:
    """The parent's side: fork, await ready, supervise, stop."""

    def __init__(
        self,
        opts: RunOptions,
        device: Any,
        queues: list[Any],
        redirect_listeners: list[socket.socket] | None,
        serve: Callable[[Any, WorkerRole], int],
    ) -> None:
        self.opts = opts
        self.device = device
        self.queues = queues
        self.redirect_listeners = redirect_listeners
        self.serve = serve
        self.pids: dict[int, int] = {}  # live (unreaped) worker pid -> index
        self.stopping = False  # a signal came, or a worker died: every worker is told
        self.failed = False
        # One socketpair per worker: the parent answers the control socket through them.
        self.channels = [socket.socketpair() for _ in queues]
        self.control: Any = None  # ztun.workers_control.ParentControl, once all are ready
        self.accelerations: dict[str, Any] = {}

    def on_signal(self, _signum: int, _frame: object) -> None:
        if not self.stopping:
            from .service import stopping

            stopping()
        self.stopping = True
        for pid in self.pids:
            _kill(pid, signal.SIGTERM)

    def on_steer_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGUSR1:
            from .logs import SETUP

            SETUP.reopen()
            for pid in self.pids:  # each worker has its own handle on the file
                _kill(pid, signal.SIGUSR1)
        elif self.control is not None:
            self.control.reload_soon()

    def run(self) -> int:
        # Handlers before the first fork (a signal in between must reach the workers,
        # not kill us with routes and device left behind); set_wakeup_fd so a signal
        # also wakes the select() loops below (PEP 475 would silently retry them).
        previous = {sig: signal.signal(sig, self.on_signal) for sig in STOP_SIGNALS}
        previous.update({sig: signal.signal(sig, self.on_steer_signal) for sig in STEER_SIGNALS})
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        try:
            for index, queue in enumerate(self.queues):
                if self.stopping:
                    return 0
                self._fork(index, queue, (ready_read, wake_read, wake_write), ready_write)
            os.close(ready_write)
            ready_write = -1
            for queue in self.queues:
                queue.close()  # the workers hold them now
            for _, worker_end in self.channels:
                worker_end.close()
            return self._supervise(ready_read, wake_read)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for fd in (ready_read, ready_write, wake_read, wake_write):
                if fd >= 0:
                    os.close(fd)
            _stop(self.pids)
            for pair in self.channels:
                for sock in pair:
                    sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fork(self, index: int, queue: Any, parent_fds: tuple[int, ...], ready_write: int) -> None:
        # Signals blocked across fork(): neither our handler running in the child (it
        # would SIGTERM the siblings) nor a pid missing from self.pids in the parent.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + STEER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                others = [q.fileno() for q in self.queues if q is not queue]
                self._child(index, queue, [*others, self.device.fileno(), *parent_fds], ready_write)
            self.pids[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _child(self, index: int, queue: Any, inherited: list[int], ready_write: int) -> NoReturn:
        # Never returns into the parent's code (whose `finally` blocks restore routes and
        # remove the device): every path ends in os._exit, the inner one first.
        code = 1
        try:
            try:
                parent = os.getppid()
                signal.set_wakeup_fd(-1)  # the parent's: its fd number is about to be closed
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                for sig in STEER_SIGNALS:  # until the worker's loop takes them over
                    signal.signal(sig, signal.SIG_IGN)
                _die_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS + STEER_SIGNALS)
                for fd in inherited:  # the other queues, the parent's descriptors
                    os.close(fd)
                for k, (parent_end, worker_end) in enumerate(self.channels):
                    os.close(parent_end.detach())  # detached: no object left owning the fd
                    if k != index:
                        os.close(worker_end.detach())
                _tag_log_lines(index)

                def ready() -> None:
                    os.write(ready_write, bytes((index,)))
                    os.close(ready_write)

                code = self.serve(queue, self._role(index, ready))
            except BaseException:  # report anything, then leave without unwinding
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
        finally:
            os._exit(code)

    def _role(self, index: int, ready: Callable[[], None]) -> WorkerRole:
        listeners = self.redirect_listeners
        if listeners is not None and index != 0 and _fake_ip(self.opts):
            # nftables redirects a fake address before steering could pin it to worker
            # 0, the pool's owner: redirected connections are worker 0's alone then.
            listeners = []
        return WorkerRole(index, len(self.queues), listeners, ready, self.channels[index][1])

    def _supervise(self, ready_read: int, wake_read: int) -> int:
        """Wait for every worker's ready byte, then for a signal or a worker's end."""
        pidfds = {os.pidfd_open(pid): pid for pid in self.pids}
        try:
            if not self._await_ready(ready_read, wake_read, pidfds):
                self.on_signal(signal.SIGTERM, None)
                self._await_exits(pidfds, wake_read)
                return 0 if not self.failed else 1
            nft_port = None
            if self.opts.redirect and self.redirect_listeners:
                from .redirect import RedirectError, install

                port = self.redirect_listeners[0].getsockname()[1]
                try:
                    install(self.device.name, port)
                    nft_port = port
                except (RedirectError, OSError, ValueError) as exc:
                    log.error("%s", exc)
                    self.failed = True
                    self.on_signal(signal.SIGTERM, None)
            try:
                if not self.stopping:
                    self._start_control()
                if not self.stopping:
                    self._log_ready(nft_port)
                    from .service import ready

                    ready(f"carrying {self.device.name} with {len(self.pids)} workers")
                self._await_exits(pidfds, wake_read)
                return 1 if self.failed else 0
            finally:
                if self.control is not None:
                    self.control.stop()
                if nft_port:
                    from .redirect import remove

                    remove(self.device.name)
        finally:
            for fd in pidfds:
                os.close(fd)

    def _start_control(self) -> None:
        """The control socket and metrics for all workers (a thread: every fork is done)."""
        from .instance import InstanceError
        from .workers_control import ParentControl

        control = ParentControl(
            self.opts,
            self.device.name,
            [parent_end for parent_end, _ in self.channels],
            self.accelerations,
        )
        try:
            control.start()
        except InstanceError as exc:
            log.error("%s", exc)
            self.failed = True
            self.on_signal(signal.SIGTERM, None)
            return
        self.control = control

    def _log_ready(self, nft_port: int | None) -> None:
        opts = self.opts
        log.info(
            "ztun ready device=%s index=%d mtu=%d addresses=%s proxy=%s dns=%s workers=%d "
            "steering=ebpf redirect=%s",
            self.device.name,
            self.device.index,
            self.device.mtu,
            ",".join(str(a) for a in opts.addresses),
            opts.config.default_outbound_summary(),
            opts.config.dns.mode,
            len(self.pids),
            f"on:{nft_port}" if nft_port else "off",
        )

    def _await_ready(self, ready_read: int, wake_read: int, pidfds: dict[int, int]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        seen = 0
        while seen < len(pidfds):
            if self.stopping:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("workers not ready after %.0f s", READY_TIMEOUT)
                self.failed = True
                return False
            readable, _, _ = select.select([ready_read, wake_read, *pidfds], [], [], remaining)
            _drain(wake_read, readable)
            if ready_read in readable:
                got = os.read(ready_read, len(pidfds))
                seen += len(got)
                if got:
                    continue
            ended = [pidfds[fd] for fd in readable if fd in pidfds]
            if ended or ready_read in readable:
                if not self.stopping:
                    log.error("worker pid %s ended before it was ready", ended or "?")
                    self.failed = True
                return False
        return True

    def _await_exits(self, pidfds: dict[int, int], wake_read: int) -> None:
        """Until every worker has ended: the first to end unasked stops the rest; once
        stopping, a worker gets STOP_GRACE seconds before SIGKILL."""
        live = {fd: pid for fd, pid in pidfds.items() if pid in self.pids}
        kill_at: float | None = None
        while live:
            if self.stopping and kill_at is None:
                kill_at = time.monotonic() + STOP_GRACE
            timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
            readable, _, _ = select.select([wake_read, *live], [], [], timeout)
            _drain(wake_read, readable)
            for fd in readable:
                if fd == wake_read:
                    continue
                pid = live.pop(fd)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                index = self.pids.pop(pid)
                if not self.stopping:
                    log.error(
                        "worker %d (pid %d) ended with %d: stopping the others", index, pid, code
                    )
                    self.failed = True
                    self.on_signal(signal.SIGTERM, None)
                elif code != 0:
                    log.warning("worker %d (pid %d) ended with %d", index, pid, code)
                    self.failed = True
            if kill_at is not None and time.monotonic() >= kill_at:
                for pid in live.values():
                    log.error("worker pid %d ignored SIGTERM for %.0f s: killed", pid, STOP_GRACE)
                    _kill(pid, signal.SIGKILL)
                kill_at = float("inf")  # now only wait for the kernel to end them


def _fake_ip(opts: RunOptions) -> bool:
    from .dns import DnsMode

    return opts.config.dns.mode is DnsMode.FAKE_IP


def _drain(fd: int, readable: list[int]) -> None:
    if fd in readable:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the parent dies (SIGKILL, OOM): it must not keep the
    device's queues -- and its steering -- alive with nobody to supervise it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _tag_log_lines(index: int) -> None:
    """`ztun[w1]: ...` instead of `ztun: ...`, whatever format the handlers use."""

    def tag(record: logging.LogRecord) -> bool:
        if not record.name.endswith("]"):
            record.name = f"{record.name}[w{index}]"
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


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
