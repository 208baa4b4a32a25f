"""What a reload may change, decided without I/O: the running config against the new one.

SIGHUP and `ztun reload` re-read the config file. What only shapes new flows -- rules, the
default outbound, proxies and groups, sniffing, the DNS upstream, the log settings -- is
swapped in, and flows already open keep the outbound they have (a proxy whose name and
URL stayed keeps its health and open-flow count; new ones start up). What the running
process is built around -- the device and its addresses, the MTU, routing, the DNS mode,
the control and metrics endpoints -- cannot change under it: a reload that changes any of
those is refused as a whole, naming them, and the running config stays.

Every field of `Config` is in exactly one of the two sets below (a unit test holds new
fields to that), so a key added later cannot slip through a reload unnoticed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .outbound.url import parse_proxy_url
from .rules import Config

#: Config fields a reload applies to new flows.
APPLIES = frozenset(
    {
        "proxy_urls",
        "proxies",
        "groups",
        "default_outbound",
        "fail_open",
        "rules",
        "sniff",
        "log_level",
        "log_file",
        "log_format",
        "log_flows",
    }
)
#: Config fields only a restart can change.
RESTART = frozenset(
    {
        "device",
        "addresses",
        "mtu",
        "interface",
        "route",
        "control",
        "metrics",
        "pid_file",
        "icmp",  # the stack's echo policy and the ICMP sockets are built at start
        "max_udp_sessions",  # the UDP flow core's bound, set at start
    }
)
#: `dns` is split: the upstream applies to new queries, the rest (mode, fake-IP ranges
#: and TTL, state file) is the running DNS handler's shape.
DNS_APPLIES = frozenset({"upstream"})
IGNORED = frozenset({"source"})  # where the config came from, not what it says


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    applies: tuple[str, ...]  # changed keys that apply to new flows
    restart: tuple[str, ...]  # changed keys that need a restart

    @property
    def refused(self) -> bool:
        return bool(self.restart)

    @property
    def unchanged(self) -> bool:
        return not self.applies and not self.restart

    def refusal(self) -> str:
        return (
            f"reload refused: {', '.join(self.restart)} changed, which needs a restart; "
            "the running config stays"
        )

    def summary(self) -> str:
        if self.unchanged:
            return "reloaded: nothing changed"
        return f"reloaded, changed: {', '.join(self.applies)}"


def _proxy_endpoints(config: Config) -> frozenset[tuple[str, int]]:
    """Every proxy's host and port (a `--proxy` flag is already in `config`)."""
    urls = (parse_proxy_url(spec.url) for spec in config.all_proxies())
    return frozenset((url.host, url.port) for url in urls)


def _without_origin(rules: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dataclasses.replace(rule, origin="") for rule in rules)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare `old` (running) with `new` (just read, with the same flags applied).

    With auto-route on, a change of a proxy's address needs a restart, because the
    routes into the TUN exclude those addresses -- a new proxy would be routed into the
    TUN and its traffic would loop.
    """
    applies: list[str] = []
    restart: list[str] = []
    for spec in dataclasses.fields(Config):
        name = spec.name
        if name in IGNORED:
            continue
        before: Any = getattr(old, name)
        after: Any = getattr(new, name)
        if name == "rules":
            # A rule's origin (file:line, for logs) moves with a comment added above
            # it: that is not a change of what the rules do.
            before, after = _without_origin(before), _without_origin(after)
        if before == after:
            continue
        if name == "dns":
            for sub in dataclasses.fields(before):
                if getattr(before, sub.name) != getattr(after, sub.name):
                    key = f"dns.{sub.name}"
                    (applies if sub.name in DNS_APPLIES else restart).append(key)
        elif name in APPLIES:
            applies.append(name)
        else:
            restart.append(name)  # RESTART, and anything not classified: the safe side
    if old.route.auto and _proxy_endpoints(old) != _proxy_endpoints(new):
        restart.append("the proxy's address (auto-route excludes it from the TUN's routes)")
    return ReloadPlan(tuple(applies), tuple(restart))
