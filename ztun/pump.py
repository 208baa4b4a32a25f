"""The TUN pump: a thread that reads frames, runs them through the stack, writes them back.

Most of a frame's cost is the two syscalls around it (the kernel delivers a written
frame synchronously, through its TCP stack), and CPython releases the GIL in both; so
pumping the TUN in its own thread lets that work overlap with the relay's socket
syscalls on the event loop -- a second core for the price of one lock around the
stack. Events the stack produces (UDP datagrams) go to the loop in one batch per wakeup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable

from .stack import SystemStack, UdpDatagram
from .tun import Device

log = logging.getLogger("ztun")

FATAL_ERRNOS = frozenset({errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV})
READ_BATCH = 64  # frames per lock hold: bounds how long an accept waits for the stack
MAX_FRAME = 65536 + 64


class TunPump(threading.Thread):
    def __init__(
        self,
        device: Device,
        stack: SystemStack,
        lock: threading.Lock,
        loop: asyncio.AbstractEventLoop,
        on_datagrams: Callable[[list[UdpDatagram]], None],
        stats: Counter[str],
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="ztun-tun-pump", daemon=True)
        self.device = device
        self.stack = stack
        self.lock = lock
        self.loop = loop
        self.on_datagrams = on_datagrams
        self.stats = stats
        # Called on the loop when the data path cannot go on (default: stop the loop).
        self.on_fatal = on_fatal or loop.stop
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self.is_alive():
            self.join(timeout)
        if self.is_alive():
            return  # still polling them: closing now could hand it a reused fd number
        os.close(self._wake_r)
        os.close(self._wake_w)

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # a bug must not silently stop the data path
            log.exception("TUN pump crashed")
            self.loop.call_soon_threadsafe(self.on_fatal)

    def _run(self) -> None:
        device = self.device
        fd = device.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        rx = memoryview(bytearray(MAX_FRAME))
        hdr = device.frame_header_len
        read_into = device.read_into
        write_frame = device.write_frame
        write = device.write
        receive = self.stack.receive
        lock = self.lock
        stats = self.stats
        monotonic = time.monotonic
        while not self._stopping:
            poller.poll()
            datagrams: list[UdpDatagram] = []
            frames = 0
            now = monotonic()
            for _ in range(READ_BATCH):
                try:
                    n = read_into(rx)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if self._stopping:
                        return
                    stats["tun_read_error"] += 1
                    if exc.errno in FATAL_ERRNOS:
                        # The device is gone (deleted, driver error): nothing will ever
                        # be readable again, so stop ztun instead of spinning.
                        log.error("TUN device failed: %s; stopping", exc)
                        self.loop.call_soon_threadsafe(self.on_fatal)
                        return
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
                    elif type(out) is UdpDatagram:
                        datagrams.append(out)
                    else:
                        write(out)  # type: ignore[arg-type]
                except BlockingIOError:
                    stats["tun_write_dropped"] += 1
                except OSError as exc:
                    stats["tun_write_error"] += 1
                    log.debug("TUN write failed: %s", exc)
            stats["tun_frames_in"] += frames
            if datagrams:
                self.loop.call_soon_threadsafe(self.on_datagrams, datagrams)
