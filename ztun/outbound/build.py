"""Config -> outbounds: the named proxies, the groups, direct and reject, with health.

`build_outbounds(opts)` is what `ztun run` calls once its loop runs (app.py): every proxy
of the config (`Config.all_proxies()`: `proxy1`... from `--proxy`, then `[[proxies]]`)
becomes a `group.Member` reporting to one `HealthMonitor`; every group
(`Config.all_groups()`: `default` first) a `group.ProxyGroup` with its prober started.
`--udp-proxy` is the proxy `udp`, carrying the UDP of the group `default`. The result is
an `OutboundSet`: the name -> outbound mapping the router takes, plus the health the
status and metrics code read (`health_snapshot()`, `groups_snapshot()`).

`proxy_endpoints(opts)` resolves every proxy's address before the loop starts, for
auto-route (never route a proxy into the TUN) and the router's loop guard.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from ztun.rules import DEFAULT_GROUP, Config

from .base import DatagramHandler, Outbound, TcpStream, UdpAssociation
from .direct import DirectOutbound
from .factory import make_outbound
from .group import Member, ProxyGroup
from .probe import HealthMonitor
from .reject import RejectOutbound
from .target import Target
from .url import ProxyURL, parse_outbound_url, parse_proxy_url

log = logging.getLogger("ztun")

UDP_PROXY = "udp"
#: A probe never waits longer than this, nor than its group's interval (at least 1 s).
MIN_PROBE_TIMEOUT = 1.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundOptions(Protocol):
    """What building the outbounds reads from `RunOptions`."""

    @property
    def config(self) -> Config: ...
    @property
    def udp_proxy(self) -> str | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def fwmark(self) -> int | None: ...
    @property
    def bind_interface(self) -> str | None: ...


class OutboundSet(Mapping[str, Outbound]):
    """Every outbound by name, and the health of the proxies behind them."""

    def __init__(
        self,
        outbounds: dict[str, Outbound],
        members: dict[str, Member],
        groups: dict[str, ProxyGroup],
        monitor: HealthMonitor,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self._outbounds = outbounds
        self.members = members
        self.groups = groups
        self.monitor = monitor
        self.aliases = aliases or {}  # a name that is another outbound's (the router resolves)

    def __getitem__(self, name: str) -> Outbound:
        return self._outbounds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outbounds)

    def __len__(self) -> int:
        return len(self._outbounds)

    def health_snapshot(self) -> list[dict[str, Any]]:
        """Per proxy: name, url (password masked), up, since (unix time), last_error,
        active, failures, rtt_ms - the fields of docs/contracts.md section 2."""
        return [
            {"name": h["name"], "url": str(self.members[h["name"]].url), **h}
            for h in self.monitor.snapshot()
        ]

    def groups_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per group: policy, members, active (the member new flows go to now, or None)."""
        return {name: group.snapshot() for name, group in self.groups.items()}

    async def close(self) -> None:
        """Stop the probers."""
        for group in self.groups.values():
            if group.prober is not None:
                await group.prober.stop()


def udp_proxy_clash(config: Config, udp_proxy: str | None) -> str | None:
    """What is wrong when `--udp-proxy` would take the name of a configured proxy."""
    if udp_proxy is not None and any(p.name == UDP_PROXY for p in config.all_proxies()):
        return f"--udp-proxy is the proxy named {UDP_PROXY!r}: rename yours"
    return None


def build_outbounds(
    opts: OutboundOptions,
    *,
    clock: Callable[[], float] | None = None,
    previous: OutboundSet | None = None,
) -> OutboundSet:
    """The outbounds `opts` configure, probers running (call with the loop running).

    `previous`: the set a reload replaces; a proxy with the same name and URL keeps its
    health and its count of open flows."""
    config = opts.config
    common: dict[str, Any] = {
        "connect_timeout": opts.connect_timeout,
        "fwmark": opts.fwmark,
        "bind_interface": opts.bind_interface,
    }
    urls = {spec.name: (parse_proxy_url(spec.url), spec.udp) for spec in config.all_proxies()}
    direct = DirectOutbound(**common)
    udp_outbound: Outbound | None = None
    if opts.udp_proxy is not None:
        spec = parse_outbound_url(opts.udp_proxy)
        if isinstance(spec, ProxyURL):
            if UDP_PROXY in urls:
                raise ValueError(f"--udp-proxy is the proxy {UDP_PROXY!r}: rename yours")
            urls[UDP_PROXY] = (spec, spec.udp_capable)
        else:
            udp_outbound = direct if spec == "direct" else RejectOutbound()
    monitor = HealthMonitor(urls) if clock is None else HealthMonitor(urls, clock=clock)
    if previous is not None:
        kept = previous.members
        same = [n for n, (url, _) in urls.items() if n in kept and kept[n].url == url]
        monitor.health.keep(previous.monitor.health, same)
        monitor.wall_offset = previous.monitor.wall_offset  # `since` stays put to the digit
    members = {
        name: Member(name, url, make_outbound(url, **common), monitor, udp=udp, **common)
        for name, (url, udp) in urls.items()
    }
    if UDP_PROXY in members and opts.udp_proxy is not None:
        udp_outbound = members[UDP_PROXY]
    groups: dict[str, ProxyGroup] = {}
    for g in config.all_groups():
        group = ProxyGroup(
            g.name,
            [members[n] for n in g.members],
            monitor,
            policy=g.policy,
            connect_timeout=opts.connect_timeout,
            fallback=direct if config.fail_open else None,
            udp_outbound=udp_outbound if g.name == DEFAULT_GROUP else None,
        )
        timeout = min(opts.connect_timeout, max(MIN_PROBE_TIMEOUT, g.interval))
        group.start_probing(probe=g.probe, interval=g.interval, timeout=timeout)
        groups[g.name] = group
    reject = RejectOutbound()
    outbounds: dict[str, Outbound] = {**members, **groups, "direct": direct, "reject": reject}
    aliases: dict[str, str] = {}
    if config.default_alias is not None:  # `--proxy direct://`: `default` means direct
        alias = outbounds[config.default_alias]
        if udp_outbound is None:
            aliases[DEFAULT_GROUP] = config.default_alias
            outbounds[DEFAULT_GROUP] = alias
        else:
            outbounds[DEFAULT_GROUP] = _Split(alias, udp_outbound)
    return OutboundSet(outbounds, members, groups, monitor, aliases)


class _Split:
    """TCP one way, UDP another: `--proxy direct:// --udp-proxy URL`."""

    def __init__(self, tcp: Outbound, udp: Outbound) -> None:
        self.tcp, self.udp = tcp, udp

    async def open_tcp(self, target: Target) -> TcpStream:
        return await self.tcp.open_tcp(target)

    async def open_udp(self, on_datagram: DatagramHandler) -> UdpAssociation:
        return await self.udp.open_udp(on_datagram)


def proxy_endpoints(opts: OutboundOptions) -> tuple[tuple[IPAddress, int], ...]:
    """Every proxy's resolved (address, port): to exclude from routes, to detect loops."""
    urls = [spec.url for spec in opts.config.all_proxies()]
    if opts.udp_proxy is not None:
        urls.append(opts.udp_proxy)
    found: dict[tuple[IPAddress, int], None] = {}
    for url in urls:
        for endpoint in _resolve(url):
            found[endpoint] = None
    return tuple(found)


def _resolve(url: str) -> tuple[tuple[IPAddress, int], ...]:
    spec = parse_outbound_url(url)
    if not isinstance(spec, ProxyURL):
        return ()
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve proxy %s: %s", spec.host, exc)
        return ()
    return tuple(
        {(ipaddress.ip_address(str(info[4][0]).split("%")[0]), spec.port) for info in infos}
    )


__all__ = [
    "OutboundOptions",
    "OutboundSet",
    "build_outbounds",
    "proxy_endpoints",
]
