"""Named proxies and groups of them: outbounds like any other (docs/contracts.md section 2).

A `Member` is one named proxy: it opens streams and associations through its protocol's
outbound and tells the `HealthMonitor` how each attempt went and how many flows are open.

A `ProxyGroup` picks a member for each new flow among those that are up, by its policy
(`policy.candidates`). A connect that fails on the member it picked is retried once on
the next up member - unless the failure was the target's (the proxy answered "refused":
another proxy would hear the same), and when another member is there to take over, the
first attempt gets only half the connect timeout so the retry still fits. UDP goes to the
first UDP-capable member that is up (or to the `--udp-proxy`, for the group `default`).

When no member is up, the group fails closed: it tries its first member anyway (a real
connect is the freshest probe; a proxy that is back is used at once) and, if that fails,
the flow is refused - the app gets a reset, or ICMP unreachable for UDP (`NoMemberUp`). With
`--fail-open` / `fail_open = true` such flows go direct instead, without the try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from .base import DatagramHandler, Outbound, TcpStream, UdpAssociation
from .dialer import ProxyDialer
from .errors import NoMemberUp, OutboundError, ProxyTimeout, UdpNotSupported
from .health import CameUp, Event, Verdict, WentDown, classify
from .opening import Done, Opening, release_stream, start_tcp, until_done
from .policy import Policy, candidates
from .probe import GroupProber, HealthMonitor, Probed
from .target import Target
from .url import ProxyURL

log = logging.getLogger("ztun")


class Member:
    """One named proxy, reporting to the health monitor."""

    def __init__(
        self,
        name: str,
        url: ProxyURL,
        outbound: Outbound,
        monitor: HealthMonitor,
        *,
        udp: bool,
        connect_timeout: float = 10.0,
        fwmark: int | None = None,
        bind_interface: str | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.outbound = outbound
        self.monitor = monitor
        self.udp = udp
        # For health checks without a probe target: a bare TCP connect to the proxy.
        self.dialer = ProxyDialer(
            url, connect_timeout=connect_timeout, fwmark=fwmark, bind_interface=bind_interface
        )

    def __repr__(self) -> str:
        return f"Member({self.name!r}, {str(self.url)!r})"

    def member_for(self, network: str) -> str:
        """The proxy a new flow goes through (for flow records): this one."""
        return self.name

    def start_tcp(self, target: Target, on_done: Done[TcpStream]) -> Opening:
        """Open through this proxy by callbacks (`opening`), reporting how it went."""

        def opened(stream: TcpStream | None, exc: BaseException | None) -> None:
            try:
                if stream is None:
                    if isinstance(exc, OutboundError):
                        self.monitor.report(self.name, exc)
                else:
                    self.monitor.succeeded(self.name)
                    self.monitor.opened(self.name)
                    stream = TcpStream(
                        stream.sock, stream.early, via=self.name, on_release=_Once(self)
                    )
            except Exception as bug:  # this flow's error, as it was when awaited
                if stream is not None:
                    release_stream(stream)
                stream, exc = None, bug
            on_done(stream, exc)  # outside the try: what it raises is its own

        return start_tcp(self.outbound, target, opened)

    async def open_tcp(self, target: Target) -> TcpStream:
        """`start_tcp`, awaited."""
        return await until_done(
            lambda on_done: self.start_tcp(target, on_done), dispose=release_stream
        )

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        if not self.udp:
            raise UdpNotSupported(f"proxy {self.name} ({self.url.label}) carries no UDP")
        try:
            association = await self.outbound.open_udp(on_datagram)
        except OutboundError as exc:
            self.monitor.report(self.name, exc, udp=True)
            raise
        self.monitor.succeeded(self.name)
        self.monitor.opened(self.name)
        association.closed.add_done_callback(lambda _f: self.monitor.closed(self.name))
        # The proxy that carries it, as TcpStream.via says for TCP: a group may have
        # retried on another member than the one the flow record named.
        with contextlib.suppress(AttributeError):  # a class with __slots__ cannot say
            association.via = self.name  # type: ignore[attr-defined]
        return association


class _Once:
    """`TcpStream.on_release` for a member's flow: the open-flow count drops exactly once."""

    __slots__ = ("_member",)

    def __init__(self, member: Member) -> None:
        self._member: Member | None = member

    def __call__(self) -> None:
        if self._member is not None:
            self._member.monitor.closed(self._member.name)
            self._member = None


class _FailoverOpening:
    """A group's flow with a member to fall back on: the first member gets half the
    connect timeout (the engine bounds the whole open), then one retry on the next."""

    __slots__ = ("_first", "_group", "_on_done", "_opening", "_target", "_timer")

    def __init__(
        self, group: ProxyGroup, first: Member, target: Target, on_done: Done[TcpStream]
    ) -> None:
        self._group, self._first, self._target = group, first, target
        self._on_done: Done[TcpStream] | None = on_done
        self._opening = first.start_tcp(target, self._first_done)
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            loop.time() + group.connect_timeout / 2, self._first_timed_out
        )

    def _first_timed_out(self) -> None:
        self._timer = None
        self._opening.cancel()
        try:
            error = self._group._first_timed_out(self._first)
        except Exception as bug:  # this flow's error, as it was when awaited
            self._finish(None, bug)
            return
        self._retry(error)

    def _first_done(self, stream: TcpStream | None, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if isinstance(exc, OutboundError):
            self._retry(exc)
        else:
            self._finish(stream, exc)

    def _retry(self, error: OutboundError) -> None:
        group = self._group
        failure: BaseException = error
        try:
            second = group._retry_on(self._first.name, error, group._names)
            if second is not None:
                log.debug(
                    "group %s: %s failed (%s); trying %s",
                    group.name,
                    self._first.name,
                    error,
                    second,
                )
                self._opening = group._by_name[second].start_tcp(self._target, self._finish)
                return
        except Exception as bug:  # this flow's error, as it was when awaited
            failure = bug
        self._finish(None, failure)

    def _finish(self, stream: TcpStream | None, exc: BaseException | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(stream, exc)
        elif stream is not None:
            release_stream(stream)

    def cancel(self) -> None:
        if self._on_done is None:
            return
        self._on_done = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._opening.cancel()


class ProxyGroup:
    """An outbound that carries each flow through one of its members."""

    def __init__(
        self,
        name: str,
        members: Sequence[Member],
        monitor: HealthMonitor,
        *,
        policy: Policy = Policy.FAILOVER,
        connect_timeout: float = 10.0,
        fallback: Outbound | None = None,
        udp_outbound: Outbound | None = None,
    ) -> None:
        """`fallback`: where flows go when no member is up (direct, with --fail-open);
        `udp_outbound`: what carries the group's UDP instead of its UDP-capable members
        (the `--udp-proxy` of the group `default`)."""
        if not members:
            raise ValueError(f"group {name} has no members")
        self.name = name
        self.members = list(members)
        self.monitor = monitor
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.fallback = fallback
        self.udp_outbound = udp_outbound
        self.udp_members = [m for m in members if m.udp]
        self.prober: GroupProber | None = None
        self._turn = 0
        self._names = [m.name for m in self.members]
        self._by_name = {m.name: m for m in self.members}
        self._all_down = False
        monitor.listen(self._on_event)

    def __repr__(self) -> str:
        return f"ProxyGroup({self.name!r}, {self.policy.value}, {self._names})"

    def start_probing(
        self, *, probe: tuple[str, int] | None, interval: float, timeout: float
    ) -> GroupProber:
        """Start the group's prober (needs a running loop)."""
        self.prober = GroupProber(
            self.name,
            self.members,
            self.monitor,
            probe=probe,
            interval=interval,
            timeout=timeout,
        )
        self.prober.start()
        return self.prober

    def snapshot(self) -> dict[str, Any]:
        """`{policy, members, active}`: `active` is the member new flows go to now."""
        order = self._candidates(self._names, advance=False)
        return {
            "policy": self.policy.value,
            "members": list(self._names),
            "active": order[0] if order else None,
        }

    def member_for(self, network: str) -> str | None:
        """The member a new flow will try first (for flow records; the flow's stream says
        in `via` if a retry took it elsewhere); "direct" when it goes direct, None when
        no member can carry it."""
        if network == "udp":
            if self.udp_outbound is not None:
                return getattr(self.udp_outbound, "name", None)
            names = [m.name for m in self.udp_members]
            up = [n for n in names if self.monitor.health.is_up(n)]
        else:
            names = self._names
            up = self._candidates(names, advance=False)
        if up:
            return up[0]
        if self.fallback is not None:
            return "direct"
        return names[0] if names else None

    def start_tcp(self, target: Target, on_done: Done[TcpStream]) -> Opening:
        """Open through the member the policy picks, by callbacks (`opening`); retried once
        on the next up member when that can help."""
        order = self._candidates(self._names, advance=True)
        if not order:
            if self.fallback is not None:
                return start_tcp(self.fallback, target, on_done)
            order = self._names[:1]  # fail closed, after one last try
        first = self._by_name[order[0]]
        if len(order) == 1:
            return first.start_tcp(target, on_done)
        return _FailoverOpening(self, first, target, on_done)

    async def open_tcp(self, target: Target) -> TcpStream:
        """`start_tcp`, awaited."""
        return await until_done(
            lambda on_done: self.start_tcp(target, on_done), dispose=release_stream
        )

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        if self.udp_outbound is not None:
            return await self.udp_outbound.open_udp(on_datagram)
        names = [m.name for m in self.udp_members]
        if not names:
            if self.fallback is not None:
                return await self.fallback.open_udp(on_datagram)
            raise UdpNotSupported(f"group {self.name}: no member carries UDP")
        order = [n for n in names if self.monitor.health.is_up(n)]
        if not order:
            if self.fallback is not None:
                return await self.fallback.open_udp(on_datagram)
            try:  # fail closed, after one last try
                return await self._by_name[names[0]].open_udp(on_datagram)
            except OutboundError as exc:
                raise NoMemberUp(f"group {self.name}: no member is up ({exc})") from exc
        first = self._by_name[order[0]]
        try:
            return await first.open_udp(on_datagram)
        except OutboundError as exc:
            second = self._retry_on(first.name, exc, names, udp=True)
            if second is None:
                raise
            return await self._by_name[second].open_udp(on_datagram)

    # -- internals --------------------------------------------------------------------------

    def _candidates(self, names: list[str], *, advance: bool) -> list[str]:
        health = self.monitor.health
        order = candidates(
            self.policy, names, is_up=health.is_up, active=health.active, turn=self._turn
        )
        if advance and order:
            self._turn += 1
        return order

    def _retry_on(
        self, failed: str, exc: BaseException, names: list[str], *, udp: bool = False
    ) -> str | None:
        """The member to retry on after `failed` gave `exc`, if a retry can help."""
        if classify(exc, udp=udp) is Verdict.ALIVE:
            return None  # the target refused: another proxy would hear the same
        health = self.monitor.health
        rest = [n for n in names if n != failed and health.is_up(n)]
        if udp:
            return rest[0] if rest else None
        order = candidates(self.policy, rest, is_up=health.is_up, active=health.active)
        return order[0] if order else None

    def _first_timed_out(self, first: Member) -> ProxyTimeout:
        """The first member took half the connect timeout: what that says about it."""
        error = ProxyTimeout(f"{first.url.label}: no answer within {self.connect_timeout / 2:g}s")
        if self.prober is not None and self.prober.target is not None:
            # The proxy may be waiting on a slow or silent target (danted while the
            # target drops SYNs): the group's probe decides, not this flow.
            self.prober.check_now(first.name)
        else:
            self.monitor.failed(first.name, str(error))
        return error

    def _on_event(self, event: Event | Probed) -> None:
        if not isinstance(event, WentDown | CameUp) or event.name not in self._by_name:
            return
        any_up = any(self.monitor.health.is_up(n) for n in self._names)
        if isinstance(event, WentDown) and not any_up and not self._all_down:
            self._all_down = True
            then = (
                "go direct (fail-open)"
                if self.fallback
                else f"get one last try on {self._names[0]}, then are refused"
            )
            log.warning("group %s: no member is up; new flows %s", self.name, then)
        elif isinstance(event, CameUp) and any_up and self._all_down:
            self._all_down = False
            log.info("group %s: %s is up again; flows use it", self.name, event.name)
