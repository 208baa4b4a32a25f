"""Proxy health, sans-IO: results and `now` in, state and transitions out.

One `Health` holds the state of every named proxy (docs/contracts.md section 2): `up`,
`since` (the last change), `last_error`, `active` (open flows), `failures` (consecutive)
and `rtt_ms` (the last probe). It is fed by probes and by real connections alike:

- a member goes down after `DOWN_AFTER` (2) consecutive failures - refused, timed out,
  a proxy error other than the target's own refusal - or at once when nothing listens at
  the proxy's address (the TCP connect to it was refused);
- it is up again after one success (a probe, or a connection that got through).

`classify` says what an outbound error means for the proxy's health; `ProbeSchedule`
says when each member is due for a check. Time is always an argument (`now`, seconds on
any monotonic clock), so tests drive all of it with a fake clock; the asyncio side is
`probe.py`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import (
    OutboundError,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    Rejected,
    TargetUnsupported,
)
from .socks5_proto import Reply

#: Consecutive failures that take a member out (one, if the connect was refused).
DOWN_AFTER = 2
#: A down member is checked at least this often, whatever its group's interval.
RECHECK_INTERVAL = 1.0


class Verdict(enum.Enum):
    """What one outcome says about the proxy that produced it."""

    ALIVE = "alive"  # it answered, possibly "the target refused"
    FAILED = "failed"  # counts towards DOWN_AFTER
    REFUSED = "refused"  # nothing listens at its address: down at once
    NOT_CONCERNED = "not concerned"  # the flow's own limit (no UDP, a target it cannot name)


def classify(exc: BaseException, *, udp: bool = False) -> Verdict:
    """The health verdict of an outbound error (or a TimeoutError from a caller's bound).

    For UDP associations only the proxy's reachability counts: a SOCKS5 server that
    answers UDP ASSOCIATE with "command not supported" (microsocks) still carries TCP.
    """
    if isinstance(exc, ProxyUnreachable):
        return Verdict.REFUSED if exc.refused else Verdict.FAILED
    if isinstance(exc, TimeoutError | ProxyTimeout):
        return Verdict.FAILED
    if isinstance(exc, TargetUnsupported | Rejected):
        return Verdict.NOT_CONCERNED
    if udp:
        return Verdict.NOT_CONCERNED
    if isinstance(exc, ProxyRefused) and exc.target_fault:
        return Verdict.ALIVE
    if isinstance(exc, ProxyRefused) and exc.reply_code == Reply.NOT_ALLOWED:
        # A policy refusal (squid's 403 for a port it does not allow, SOCKS5 0x02)
        # concerns this flow only: it must not take a working proxy down (with
        # fail_open, every flow would then go direct).
        return Verdict.NOT_CONCERNED
    if isinstance(exc, OutboundError):  # auth, protocol errors, policy refusals
        return Verdict.FAILED
    return Verdict.NOT_CONCERNED


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WentDown:
    name: str
    error: str
    since: float


@dataclass(frozen=True, slots=True)
class CameUp:
    name: str
    since: float
    rtt_ms: float | None = None


Event = WentDown | CameUp


@dataclass(frozen=True, slots=True)
class ProxyHealth:
    """One proxy's state; `since` is on the clock `now` was given in."""

    name: str
    up: bool
    since: float
    last_error: str | None
    active: int
    failures: int
    rtt_ms: float | None


@dataclass(slots=True)
class _State:
    up: bool
    since: float
    last_error: str | None = None
    active: int = 0
    failures: int = 0
    rtt_ms: float | None = None


class Health:
    """The health of a fixed set of named proxies; every member starts up."""

    def __init__(self, names: Iterable[str], now: float) -> None:
        self._states = {name: _State(up=True, since=now) for name in names}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def is_up(self, name: str) -> bool:
        return self._states[name].up

    def active(self, name: str) -> int:
        return self._states[name].active

    def state(self, name: str) -> ProxyHealth:
        s = self._states[name]
        return ProxyHealth(name, s.up, s.since, s.last_error, s.active, s.failures, s.rtt_ms)

    def succeeded(self, name: str, now: float, *, rtt_ms: float | None = None) -> list[Event]:
        """A probe or a connection got through (`rtt_ms`: a probe's round trip)."""
        s = self._states[name]
        s.failures = 0
        if rtt_ms is not None:
            s.rtt_ms = rtt_ms
        if s.up:
            return []
        s.up, s.since = True, now
        return [CameUp(name, now, rtt_ms)]

    def failed(self, name: str, now: float, error: str, *, refused: bool = False) -> list[Event]:
        """A probe or a connection failed because of the proxy (see `classify`)."""
        s = self._states[name]
        s.failures += 1
        s.last_error = error
        if not s.up or (s.failures < DOWN_AFTER and not refused):
            return []
        s.up, s.since = False, now
        return [WentDown(name, error, now)]

    def report(
        self, name: str, now: float, exc: BaseException, *, udp: bool = False
    ) -> list[Event]:
        """Feed an error as `classify` judges it."""
        verdict = classify(exc, udp=udp)
        if verdict is Verdict.ALIVE:
            return self.succeeded(name, now)
        if verdict is Verdict.NOT_CONCERNED:
            return []
        text = str(exc) or type(exc).__name__
        return self.failed(name, now, text, refused=verdict is Verdict.REFUSED)

    def keep(self, previous: Health, names: Iterable[str]) -> None:
        """Share `previous`'s state of `names` (proxies a reload left as they were): their
        health carries over, and the open flows counted there (which report their close
        to `previous`) stay counted."""
        for name in names:
            self._states[name] = previous._states[name]

    def opened(self, name: str) -> None:
        self._states[name].active += 1

    def closed(self, name: str) -> None:
        s = self._states[name]
        s.active = max(0, s.active - 1)

    def snapshot(self, wall_offset: float) -> list[dict[str, Any]]:
        """The contract's fields per proxy, `since` as unix time (`wall_offset`: the wall
        clock minus the clock `now` is given in, taken once so `since` stays put)."""
        return [
            {
                "name": name,
                "up": s.up,
                "since": s.since + wall_offset,
                "last_error": s.last_error,
                "active": s.active,
                "failures": s.failures,
                "rtt_ms": s.rtt_ms,
            }
            for name, s in self._states.items()
        ]


class ProbeSchedule:
    """When each member of one group is due for a check.

    With a probe target (`probe_up`), every member is checked each `interval`; without
    one, up members are left to real traffic. A down member is checked every
    min(interval, RECHECK_INTERVAL) either way, so it is back soon after it recovers.
    The first probe of an up member is due at once; a member that just went down is
    checked a period after it did.
    """

    def __init__(self, members: Iterable[str], interval: float, *, probe_up: bool) -> None:
        self.interval = interval
        self.probe_up = probe_up
        self._last: dict[str, float | None] = dict.fromkeys(members)

    def period(self, up: bool) -> float | None:
        if up:
            return self.interval if self.probe_up else None
        return min(self.interval, RECHECK_INTERVAL)

    def _due_at(self, name: str, health: Health) -> float | None:
        up = health.is_up(name)
        period = self.period(up)
        if period is None:
            return None
        last = self._last[name]
        if not up:  # the failure that took it down was a check: the next is a period on
            since = health.state(name).since
            last = since if last is None else max(last, since)
        return float("-inf") if last is None else last + period

    def due(self, now: float, health: Health) -> list[str]:
        """The members to check now (mark each with `started`)."""
        return [
            name
            for name in self._last
            if (at := self._due_at(name, health)) is not None and at <= now
        ]

    def started(self, name: str, now: float) -> None:
        self._last[name] = now

    def next_due(self, health: Health) -> float | None:
        """When the next check falls due (None: only a member going down changes that)."""
        times = [t for name in self._last if (t := self._due_at(name, health)) is not None]
        return min(times, default=None)
