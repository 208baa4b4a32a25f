"""Plan Linux auto-route: policy routing with a fwmark, as wg-quick and sing-tun do it.

The plan never touches ``main``: everything lives in a dedicated table (default 2022) and
a short ladder of ``ip rule`` entries around priority P (default 9001), per address family::

    P-3  fwmark 0/MASK ipproto udp|tcp dport 53 lookup T   (capture_dns: even a LAN resolver)
    P-2  to EXCLUDE lookup main                            (--exclude, and the proxy itself)
    P-1  lookup main suppress_prefixlength 0               (more specific routes still win)
    P    not fwmark M lookup T                             (everything else into the TUN)
    P+1  not fwmark M unreachable                          (--strict-route only;
                                                            with --include: per prefix,
                                                            fwmark 0/MASK to X unreachable)

and in table T: ``default dev TUN`` (or one route per ``--include``), or, for a family the
TUN does not carry under ``--strict-route``, ``unreachable default``.

Why this shape:

* ztun's own outbound sockets carry SO_MARK = M, so rule P skips them and they use
  ``main``: the proxy connection can never loop into the TUN.  The proxy's address is
  additionally sent to ``main`` at P-2, so even an unmarked socket (another program talking
  to the same proxy, a helper that forgot the mark) cannot loop.
* ``suppress_prefixlength 0`` consults ``main`` but ignores its default route: the LAN,
  link-local and the TUN's own connected prefix keep working, only "the internet" moves.
* Rules are added from the harmless end (routes, excludes, suppress) to the one that moves
  traffic (P), so a crash half-way never blackholes; restore runs the journal backwards.

Strict route (``strict=True``) blocks what would otherwise go around the TUN:

* A family the TUN has no address for (typically IPv6 when only IPv4 is proxied) gets the
  same ladder with ``unreachable default`` in T, so it fails fast (ENETUNREACH, and Happy
  Eyeballs falls back to IPv4) instead of leaking; on-link neighbours still work through
  the suppress rule, as they do for IPv4.
* Rule P+1 makes the tunnel fail closed.  If ztun dies and its TUN disappears, the kernel
  flushes the TUN's routes from T but keeps the rules: without P+1 all traffic would
  silently fall through to ``main`` (32766) and leave by the physical interface; with it
  the lookup stops with ENETUNREACH until ``ztun cleanup`` or the next start.  It also
  stops sockets bound to another interface (SO_BINDTODEVICE), which never match
  ``dev TUN`` routes: for IPv6 the lookup fails; for IPv4 the kernel then "assumes the
  destination is on link" on the bound device (net/ipv4/route.c) -- the gateway is never
  used, so such traffic cannot leave the LAN, but a full drop of bound IPv4 sockets needs a
  netfilter rule, which routing cannot express.  With ``--include``, P+1 is limited to the
  included prefixes: strict means "what is meant for the tunnel cannot go around it", not
  "everything else is blocked".
* Excludes are rules to ``main`` (P-2), not ``throw`` routes in T: a throw would fall
  through to P+1 and be blocked in strict mode.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ztun.route.model import (
    RESERVED_TABLES,
    TABLE_MAIN,
    IPNetwork,
    PolicyRule,
    RouteChange,
    TableRoute,
    family_of,
)

DEFAULT_TABLE = 2022
DEFAULT_FWMARK = 0x2022
DEFAULT_FWMASK = 0xFFFFFFFF
DEFAULT_PRIORITY = 9001
# Priorities the kernel's default rules use (local=0, main=32766, default=32767); the
# ladder must sit strictly between them.
_MIN_PRIORITY = 1
_MAX_PRIORITY = 32765
_LADDER_BELOW = 3  # P-3 .. P
_LADDER_ABOVE = 1  # P+1

DNS_PORT = 53
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DEFAULT_DST: dict[int, str] = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class RoutePlanError(ValueError):
    """The auto-route options cannot be turned into a sound plan (message says why)."""


@dataclass(frozen=True, slots=True)
class AutoRouteConfig:
    """Everything the planner needs; built by the engine from ``Config`` + the live TUN.

    ``proxy_addresses`` are the *resolved* addresses of the SOCKS5 server (the engine
    resolves a hostname first).  ``capture_dns`` adds the port-53 rules; the engine sets it
    when a DNS mode other than ``off`` is active.
    """

    device: str
    tun_addresses: tuple[IPInterface, ...]
    proxy_addresses: tuple[IPAddress, ...] = ()
    include: tuple[IPNetwork, ...] = ()
    exclude: tuple[IPNetwork, ...] = ()
    strict: bool = False
    capture_dns: bool = False
    table: int = DEFAULT_TABLE
    fwmark: int = DEFAULT_FWMARK
    fwmask: int = DEFAULT_FWMASK
    priority: int = DEFAULT_PRIORITY

    @property
    def proxied_families(self) -> frozenset[int]:
        """Families the TUN carries: those it has an address of."""
        return frozenset(family_of(a.network) for a in self.tun_addresses)


def validate_auto_route(cfg: AutoRouteConfig) -> None:
    """Raise RoutePlanError when ``cfg`` cannot be planned (every OS's planner checks)."""
    if not cfg.device:
        raise RoutePlanError("auto-route needs the TUN device name")
    if not cfg.tun_addresses:
        raise RoutePlanError("auto-route needs at least one TUN address (--address)")
    if cfg.table in RESERVED_TABLES or not 0 < cfg.table < 2**32:
        raise RoutePlanError(
            f"route table {cfg.table} is reserved (0, 253 default, 254 main, 255 local);"
            " choose another, e.g. 2022"
        )
    if not 0 < cfg.fwmark < 2**32 or not 0 < cfg.fwmask < 2**32:
        raise RoutePlanError(f"fwmark {cfg.fwmark:#x}/{cfg.fwmask:#x} must be non-zero 32-bit")
    if cfg.fwmark & cfg.fwmask == 0:
        raise RoutePlanError(f"fwmark {cfg.fwmark:#x} has no bit inside mask {cfg.fwmask:#x}")
    low, high = cfg.priority - _LADDER_BELOW, cfg.priority + _LADDER_ABOVE
    if low < _MIN_PRIORITY or high > _MAX_PRIORITY:
        raise RoutePlanError(
            f"rule priority {cfg.priority} puts the ladder at {low}..{high}, outside"
            f" {_MIN_PRIORITY}..{_MAX_PRIORITY} (between the local and main rules)"
        )
    proxied = cfg.proxied_families
    for net in cfg.include:
        if family_of(net) not in proxied:
            raise RoutePlanError(
                f"--include {net} is IPv{net.version} but the TUN has no IPv{net.version} address"
            )


def _host_net(addr: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(addr)


def _unique(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    seen: dict[str, IPNetwork] = {}
    for net in nets:
        seen.setdefault(str(net), net)
    return list(seen.values())


def plan_auto_route(cfg: AutoRouteConfig) -> list[RouteChange]:
    """The ordered list of changes that sets up auto-route (pure; raises RoutePlanError).

    Apply in list order, undo in reverse order: the order is chosen so that every prefix
    of the list is a safe state (see module docstring).
    """
    validate_auto_route(cfg)
    proxied = cfg.proxied_families
    include_mode = bool(cfg.include)
    # Families that get a ladder: those we carry, plus under strict (default mode) those
    # we must block.
    laddered = [f for f in _FAMILIES if f in proxied or (cfg.strict and not include_mode)]
    p = cfg.priority
    excludes = _unique([*cfg.exclude, *(_host_net(a) for a in cfg.proxy_addresses)])

    routes: list[RouteChange] = []
    exclude_rules: list[RouteChange] = []
    suppress_rules: list[RouteChange] = []
    dns_rules: list[RouteChange] = []
    lookup_rules: list[RouteChange] = []
    strict_rules: list[RouteChange] = []

    for fam in laddered:
        fam_includes = [n for n in cfg.include if family_of(n) == fam]
        has_default = False
        if fam not in proxied:
            routes.append(
                TableRoute(family=fam, table=cfg.table, dst=_DEFAULT_DST[fam], type="unreachable")
            )
            has_default = True
        elif include_mode:
            for net in fam_includes:
                routes.append(
                    TableRoute(family=fam, table=cfg.table, dst=str(net), device=cfg.device)
                )
        else:
            routes.append(
                TableRoute(family=fam, table=cfg.table, dst=_DEFAULT_DST[fam], device=cfg.device)
            )
            has_default = True

        for net in excludes:
            if family_of(net) == fam:
                exclude_rules.append(
                    PolicyRule(family=fam, priority=p - 2, table=TABLE_MAIN, dst=str(net))
                )
        suppress_rules.append(
            PolicyRule(family=fam, priority=p - 1, table=TABLE_MAIN, suppress_prefixlength=0)
        )
        if cfg.capture_dns and has_default:
            for proto in (IPPROTO_UDP, IPPROTO_TCP):
                dns_rules.append(
                    PolicyRule(
                        family=fam,
                        priority=p - 3,
                        table=cfg.table,
                        fwmark=0,
                        fwmask=cfg.fwmask,
                        ip_proto=proto,
                        dport=DNS_PORT,
                    )
                )
        lookup_rules.append(
            PolicyRule(
                family=fam,
                priority=p,
                table=cfg.table,
                fwmark=cfg.fwmark,
                fwmask=cfg.fwmask,
                invert=True,
            )
        )
        if cfg.strict and not include_mode:
            strict_rules.append(
                PolicyRule(
                    family=fam,
                    priority=p + 1,
                    action="unreachable",
                    fwmark=cfg.fwmark,
                    fwmask=cfg.fwmask,
                    invert=True,
                )
            )
        elif cfg.strict:
            # "not fwmark M to X" would negate the destination too; say "unmarked" instead.
            for net in fam_includes:
                strict_rules.append(
                    PolicyRule(
                        family=fam,
                        priority=p + 1,
                        action="unreachable",
                        fwmark=0,
                        fwmask=cfg.fwmask,
                        dst=str(net),
                    )
                )

    return [
        *routes,
        *exclude_rules,
        *suppress_rules,
        *dns_rules,
        *lookup_rules,
        *strict_rules,
    ]
