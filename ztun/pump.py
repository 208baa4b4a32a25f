"""The TUN pump: reads frames, runs them through the stack, writes them back.

By default it runs on the event loop (`start_inline`: add_reader on the TUN, one batch
of up to READ_BATCH frames per wakeup). `--tun-thread` (and `--portable`, and any device
without a descriptor, such as a Wintun adapter) runs the same batches in a thread of its
own (`start`) that waits on `Device.wait_readable`, so the TUN's syscalls -- in which
CPython releases the GIL -- can overlap the relay's; measured on 2 cores that lost
everywhere (`ztun bench --systems ztun` with and without: TCP one stream 4.77 -> 5.85
Gbit/s up, request/response 1934 -> 3322/s, UDP at 1 Gbit/s 352 -> 512 Mbit/s, new
connections +16%), because every hand-off of the GIL between two busy threads is a futex
wake and a context switch (strace: ~24 futex calls per new connection). The thread stays
as an option for machines where it pays, and as the only way for a device that cannot be
watched by the loop.

Events the stack produces (UDP datagrams) go to the loop in one batch per wakeup --
except those of a flow the loop has already routed and opened: the engine registers such a
(session, destination) in `udp_routes`, and the pump sends its datagrams itself (see
`ztun.outbound.uplink`), so a UDP stream costs the loop nothing after its first datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from .outbound.uplink import Uplink
from .stack import IcmpEchoRequest, SystemStack, UdpDatagram, UdpSession
from .tun import Device

log = logging.getLogger("ztun")

#: A read error that says the device is gone (deleted Linux TUN: EBADFD; utun: ENXIO).
#: EBADFD is Linux's only: macOS and Windows have no such errno (nor the name).
FATAL_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EBADFD", "EBADF", "EIO", "ENXIO", "ENODEV")
    if hasattr(errno, name)
)
READ_BATCH = 64  # frames per wakeup: bounds how long the loop (accepts, relays) waits
MAX_FRAME = 65536 + 64
#: Longest the reader thread blocks in `wait_readable`: how soon it sees a stop, or an
#: uplink to retire, when no frame arrives (a busy device wakes it far sooner).
WAIT_SLICE = 0.1
#: (app session, destination address, destination port): one routed UDP destination.
RouteKey = tuple[UdpSession, bytes, int]
#: Where its datagrams go: the flow's uplink and the header for that destination.
Route = tuple[Uplink, bytes]
#: What the stack produced for the loop: datagrams to route, echo requests to forward.
LoopEvent = UdpDatagram | IcmpEchoRequest


class TunPump(threading.Thread):
    def __init__(
        self,
        device: Device,
        stack: SystemStack,
        lock: threading.Lock,
        loop: asyncio.AbstractEventLoop,
        on_datagrams: Callable[[list[LoopEvent]], None],
        stats: Counter[str],
        on_fatal: Callable[[], None] | None = None,
        on_backlog: Callable[[bool], None] | None = None,
    ) -> None:
        """`on_backlog(backlogged)`: called on the loop (inline pumping only) when the
        reader starts or stops falling behind -- a batch that read READ_BATCH frames
        left more in the TUN's queue, which overflows if that goes on."""
        super().__init__(name="ztun-tun-pump", daemon=True)
        self.device = device
        self.stack = stack
        self.lock = lock
        self.loop = loop
        self.on_datagrams = on_datagrams
        self.stats = stats
        # Called on the loop when the data path cannot go on (default: stop the loop).
        self.on_fatal = on_fatal or loop.stop
        self.on_backlog = on_backlog
        self.backlogged = False
        # Written by the loop (dict set/pop are atomic under the GIL), read by the pump.
        self.udp_routes: dict[RouteKey, Route] = {}
        # Counters of what the pump sent itself; only the pump writes them.
        self.uplink_stats: Counter[str] = Counter()
        self._retired: deque[Uplink] = deque()
        self._stopping = False
        self._stopped = False
        self._inline = False
        self._rx = memoryview(bytearray(MAX_FRAME))

    def retire(self, uplink: Uplink) -> None:
        """Close `uplink` once the pump cannot be sending on it (its routes must be gone).

        The reader thread closes it between two batches (within WAIT_SLICE when idle);
        the inline pump -- on this very thread, so never mid-send -- and a stopped one,
        at once.
        """
        if self._stopped or not self.is_alive():
            uplink.close()
            return
        self._retired.append(uplink)
        if self._stopped:  # raced with the pump's exit, which may have drained already
            self._close_retired()

    def _close_retired(self) -> None:
        retired = self._retired
        while True:
            try:
                uplink = retired.popleft()
            except IndexError:
                return
            uplink.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._inline:
            self._inline = False
            with contextlib.suppress(ValueError, OSError):  # fd already closed
                self.loop.remove_reader(self.device.fileno())
        if self.is_alive():
            self.device.wake()  # Wintun: out of its wait now, not at the slice's end
            self.join(timeout)
        if self.is_alive():
            return  # still sending on them: closing now could hand it a reused fd number
        self._close_retired()

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # a bug must not silently stop the data path
            log.exception("TUN pump crashed")
            self.loop.call_soon_threadsafe(self.on_fatal)
        finally:
            self._stopped = True
            self._close_retired()

    def _run(self) -> None:
        wait_readable = self.device.wait_readable
        deliver = self._deliver_threadsafe
        while not self._stopping:
            readable = wait_readable(WAIT_SLICE)
            if self._retired:  # no send of a previous batch is in flight: safe to close
                self._close_retired()
            if readable and not self._stopping and not self._batch(deliver):
                return

    def _deliver_threadsafe(self, datagrams: list[LoopEvent]) -> None:
        self.loop.call_soon_threadsafe(self.on_datagrams, datagrams)

    # -- inline: the same work on the event loop's thread ---------------------------------

    def start_inline(self) -> None:
        """Pump from the event loop (add_reader) instead of a thread: no GIL hand-offs
        between two threads, which is what dominates a connection-heavy load."""
        self._inline = True
        self.loop.add_reader(self.device.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            going = self._batch(self.on_datagrams)
        except Exception:  # a bug must not silently stop the data path
            log.exception("TUN pump crashed")
            self.loop.call_soon(self.on_fatal)
            going = False
        if not going:
            self._inline = False
            self.loop.remove_reader(self.device.fileno())

    def _batch(self, deliver: Callable[[list[LoopEvent]], None]) -> bool:
        """Read up to READ_BATCH frames, run each through the stack, write back what it
        returns; False once the device failed for good (on_fatal has been scheduled)."""
        device = self.device
        rx = self._rx
        hdr = device.frame_header_len
        read_into = device.read_into
        write_frame = device.write_frame
        write = device.write
        receive = self.stack.receive
        lock = self.lock
        stats = self.stats
        routes = self.udp_routes
        datagrams: list[LoopEvent] = []
        fast: list[tuple[Route, bytes]] = []
        frames = written = 0
        now = time.monotonic()
        for _ in range(READ_BATCH):
            try:
                n = read_into(rx)
            except BlockingIOError:
                break
            except OSError as exc:
                if self._stopping:
                    return False
                stats["tun_read_error"] += 1
                if exc.errno in FATAL_ERRNOS:
                    # The device is gone (deleted, driver error): nothing will ever
                    # be readable again, so stop ztun instead of spinning.
                    log.error("TUN device failed: %s; stopping", exc)
                    self.loop.call_soon_threadsafe(self.on_fatal)
                    return False
                log.error("TUN read failed: %s", exc)
                break
            frames += 1
            if n <= hdr:
                stats["tun_short_frame"] += 1
                continue
            # virtio NEEDS_CSUM (flags bit 0): the transport checksum is a partial sum.
            with lock:
                out = receive(rx[hdr:n], now, hdr != 0 and rx[0] & 1 == 1)
            if out is None:
                continue
            try:
                if type(out) is memoryview:
                    # Rewritten in place: back as read, header included, so the
                    # kernel still segments/checksums a GSO super-packet.
                    write_frame(rx[:n])
                    written += 1
                elif type(out) is UdpDatagram:
                    route = routes.get((out.session, out.dst_addr, out.dst_port))
                    if route is None:
                        datagrams.append(out)
                    else:
                        fast.append((route, out.payload))
                elif type(out) is list:  # a reassembled datagram's answer, in fragments
                    for packet in out:
                        write(packet)
                        written += 1
                elif type(out) is IcmpEchoRequest:  # --icmp direct: the loop sends it
                    datagrams.append(out)
                else:
                    write(out)  # type: ignore[arg-type]
                    written += 1
            except BlockingIOError:
                stats["tun_write_dropped"] += 1
            except OSError as exc:
                stats["tun_write_error"] += 1
                log.debug("TUN write failed: %s", exc)
        stats["tun_frames_in"] += frames
        stats["tun_packets_out"] += written
        # Only the inline pump competes with the loop's other work for reading time.
        if self._inline and (frames == READ_BATCH) != self.backlogged:
            self.backlogged = not self.backlogged
            if self.on_backlog is not None:
                self.on_backlog(self.backlogged)
        if fast:
            self._send_routed(fast)
        if datagrams:
            try:
                deliver(datagrams)
            except Exception:  # one flow's bug must not stop the data path for all
                stats["udp_delivery_error"] += 1
                log.exception("UDP datagrams dropped: the engine failed on them")
        return True

    def _send_routed(self, fast: list[tuple[Route, bytes]]) -> None:
        """Send a batch's routed datagrams: each run to one (uplink, header) in one call."""
        stats = self.uplink_stats
        sent = octets = 0
        count = len(fast)
        i = 0
        while i < count:
            route = fast[i][0]
            j = i + 1
            while j < count and fast[j][0] is route:
                j += 1
            uplink, header = route
            n, b = uplink.send(header, [payload for _, payload in fast[i:j]])
            sent += n
            octets += b
            i = j
        stats["udp_datagrams_up"] += sent
        stats["udp_bytes_up"] += octets
        if sent < count:
            stats["udp_up_dropped"] += count - sent
