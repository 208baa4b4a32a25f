"""The asyncio side of proxy health: a monitor around the sans-IO `health.Health`, and a
prober per group.

`HealthMonitor` stamps every report with the clock, feeds the core, logs each transition
(``proxy a down: ...``, ``proxy a up``: the lines operators and the integration tests
watch) and passes the transitions to its listeners - the groups (to log "no member up")
and the probers (to start checking a member that just went down). `listen` is also the
hook a test or the status code uses to await a state instead of polling it.

`GroupProber` runs one task per group: it sleeps until `ProbeSchedule` says a member is
due, then checks it - a CONNECT to the group's probe target through the member, or, with
no probe target, a TCP connect to the proxy itself - and reports the result with its
round-trip time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ProxyTimeout
from .health import CameUp, Event, Health, ProbeSchedule, WentDown
from .target import Target

if TYPE_CHECKING:
    from .group import Member

log = logging.getLogger("ztun")


@dataclass(frozen=True, slots=True)
class Probed:
    """A check of `name` finished: `rtt_ms` when it got through, else `error`."""

    name: str
    rtt_ms: float | None
    error: str | None = None


Listener = Callable[[Event | Probed], None]


class HealthMonitor:
    """One `Health` for every named proxy, on a monotonic clock (injectable for tests)."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.health = Health(names, clock())
        # unix time = clock() + offset, taken once: a snapshot's `since` never jitters.
        self.wall_offset = wall_clock() - clock()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every transition; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def succeeded(self, name: str, *, rtt_ms: float | None = None) -> None:
        self._publish(self.health.succeeded(name, self.clock(), rtt_ms=rtt_ms))

    def failed(self, name: str, error: str) -> None:
        self._publish(self.health.failed(name, self.clock(), error))

    def report(self, name: str, exc: BaseException, *, udp: bool = False) -> None:
        self._publish(self.health.report(name, self.clock(), exc, udp=udp))

    def opened(self, name: str) -> None:
        self.health.opened(name)

    def closed(self, name: str) -> None:
        self.health.closed(name)

    def snapshot(self) -> list[dict[str, Any]]:
        return self.health.snapshot(self.wall_offset)

    def probed(
        self, name: str, *, rtt_ms: float | None = None, error: BaseException | None = None
    ) -> None:
        """A check's outcome: fed to the core, then told to listeners (never logged)."""
        if error is None:
            self.succeeded(name, rtt_ms=rtt_ms)
        else:
            self.report(name, error)
        text = None if error is None else str(error) or type(error).__name__
        self._tell(Probed(name, rtt_ms if error is None else None, text))

    def _tell(self, event: Event | Probed) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop health tracking
                log.exception("health listener failed on %s", event)

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, WentDown):
                log.warning("proxy %s down: %s", event.name, event.error)
            elif isinstance(event, CameUp):
                rtt = f" (probe {event.rtt_ms:.1f} ms)" if event.rtt_ms is not None else ""
                log.info("proxy %s up%s", event.name, rtt)
            self._tell(event)


class GroupProber:
    """Checks the members of one group on their `ProbeSchedule`, in a task of its own."""

    def __init__(
        self,
        group: str,
        members: Iterable[Member],
        monitor: HealthMonitor,
        *,
        probe: tuple[str, int] | None,
        interval: float,
        timeout: float,
    ) -> None:
        self.group = group
        self.members = {m.name: m for m in members}
        self.monitor = monitor
        self.target = Target(*probe) if probe is not None else None
        self.timeout = timeout
        self.schedule = ProbeSchedule(self.members, interval, probe_up=probe is not None)
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop_listening = monitor.listen(self._on_event)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"probe-{self.group}"
            )

    async def stop(self) -> None:
        self._stop_listening()
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_event(self, event: Event | Probed) -> None:
        if isinstance(event, WentDown | CameUp) and event.name in self.members:
            self._wake.set()  # a member changed: its next check may be sooner

    async def _run(self) -> None:
        health = self.monitor.health
        while True:
            self._wake.clear()
            now = self.monitor.clock()
            for name in self.schedule.due(now, health):
                if name in self._running:
                    continue  # the last check has not finished: never two at once
                self.schedule.started(name, now)
                task = asyncio.get_running_loop().create_task(self._check(self.members[name]))
                self._running[name] = task
                task.add_done_callback(functools.partial(self._finished, name))
            due = self.schedule.next_due(health)
            wait = None if due is None else max(0.0, due - self.monitor.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def check_now(self, name: str) -> None:
        """Check `name` at once (unless a check of it is running): a flow that ran out of
        time cannot tell a slow proxy from a slow target; a probe of the group's target
        can."""
        if name in self._running or name not in self.members:
            return
        self.schedule.started(name, self.monitor.clock())
        task = asyncio.get_running_loop().create_task(self._check(self.members[name]))
        self._running[name] = task
        task.add_done_callback(functools.partial(self._finished, name))

    def _finished(self, name: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(name, None)
        self._wake.set()

    async def _check(self, member: Member) -> None:
        started = self.monitor.clock()
        try:
            async with asyncio.timeout(self.timeout):
                if self.target is not None:
                    outbound = member.outbound
                    open_probe = getattr(outbound, "open_probe", outbound.open_tcp)
                    stream = await open_probe(self.target)
                    stream.sock.close()
                else:
                    sock = await member.dialer.connect()
                    sock.close()
        except TimeoutError:
            what = f"probe {self.target}" if self.target else "connect"
            error = ProxyTimeout(f"{member.url.label}: {what} timed out after {self.timeout:g}s")
            self.monitor.probed(member.name, error=error)
            return
        except Exception as exc:  # an OutboundError: the core classifies it
            self.monitor.probed(member.name, error=exc)
            return
        self.monitor.probed(member.name, rtt_ms=(self.monitor.clock() - started) * 1000.0)
