"""Plan auto-route for an OS with one routing table (macOS, Windows): pure.

Linux steers with policy rules and a table of its own (:mod:`ztun.route.plan`); macOS and
Windows have one table, so the tunnel's routes must win by being more specific:

* into the TUN: both halves of each carried family (``0.0.0.0/1`` + ``128.0.0.0/1``,
  ``::/1`` + ``8000::/1``, OpenVPN's def1 and sing-tun's shape), which beat the default
  route without replacing it -- or, with ``--include``, just the included prefixes;
* kept off it: each ``--exclude`` and each proxy address that a tunnel route would
  capture gets a route of its own through whatever carries it *now* (found before any
  change: the OS's best-route lookup), more specific than the tunnel's.  An address a
  more specific route already carries (loopback, the LAN) needs nothing: that route
  keeps beating the tunnel's.

The order is the harmless end first (the excludes), then the routes that move traffic,
so a crash half-way never leaves the proxy routed into the tunnel.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ztun.route.model import SystemRoute, family_of

if TYPE_CHECKING:
    from ztun.route.plan import AutoRouteConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HALVES: dict[int, tuple[str, str]] = {
    socket.AF_INET: ("0.0.0.0/1", "128.0.0.0/1"),
    socket.AF_INET6: ("::/1", "8000::/1"),
}


@dataclass(frozen=True, slots=True)
class CurrentRoute:
    """The route that carries an address now: its prefix length, interface and next hop
    (None: on-link)."""

    prefixlen: int
    device: str
    ifindex: int
    gateway: IPAddress | None


Lookup = Callable[[IPAddress], CurrentRoute | None]


def tunnel_networks(cfg: AutoRouteConfig) -> list[IPNetwork]:
    """What goes into the TUN: the includes, or both halves of each carried family."""
    if cfg.include:
        return list(cfg.include)
    nets: list[IPNetwork] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        if family in cfg.proxied_families:
            nets += [ipaddress.ip_network(n) for n in HALVES[family]]
    return nets


def _covers(outer: IPNetwork, inner: IPNetwork) -> bool:
    if isinstance(outer, ipaddress.IPv4Network) and isinstance(inner, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(outer, ipaddress.IPv6Network) and isinstance(inner, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def plan_system_routes(cfg: AutoRouteConfig, tun_index: int, lookup: Lookup) -> list[SystemRoute]:
    """The routes auto-route makes, in the order to make them (see the module doc).

    ``lookup(addr)`` is the route that carries ``addr`` before any change."""
    from ztun.route.plan import RoutePlanError, validate_auto_route

    validate_auto_route(cfg)
    tunnel = tunnel_networks(cfg)
    excludes = dict.fromkeys(
        [*cfg.exclude, *(ipaddress.ip_network(a) for a in cfg.proxy_addresses)]
    )
    kept: list[SystemRoute] = []
    for net in excludes:
        covering = [t.prefixlen for t in tunnel if _covers(t, net)]
        if not covering:
            continue
        tunnel_prefix = max(covering)
        now = lookup(net.network_address)
        if now is None or now.prefixlen > tunnel_prefix:
            continue  # unroutable today, or a more specific route keeps it off the tunnel
        if net.prefixlen <= tunnel_prefix:
            raise RoutePlanError(
                f"--exclude {net} is not more specific than the tunnel's /{tunnel_prefix} "
                "route to it: exclude narrower prefixes"
            )
        kept.append(
            SystemRoute(
                family=family_of(net),
                dst=str(net),
                device=now.device,
                ifindex=now.ifindex,
                gateway=str(now.gateway) if now.gateway is not None else None,
            )
        )
    into_tunnel = [
        SystemRoute(family=family_of(n), dst=str(n), device=cfg.device, ifindex=tun_index)
        for n in tunnel
    ]
    return [*kept, *into_tunnel]
