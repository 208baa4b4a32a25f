"""Where a flow goes: rules, fake-IP domains, sniffed names and the loop guard.

The engine asks once per TCP connection (after an optional, bounded sniff of its first
bytes) and once per UDP datagram destination; the answer is an outbound and the target
to give it -- a domain when one is known, so the proxy resolves it (remote DNS).

Rules name outbounds (a proxy, a group, ``direct``, ``reject``); the router holds the
name -> outbound map that ``ztun.outbound.build`` assembled and hands out the outbound a
rule named. A group is an outbound like any other: it picks its member itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .outbound import Outbound, RejectOutbound, Target
from .rules import DEFAULT_GROUP, Action, Flow, RuleSet

if TYPE_CHECKING:
    from .dns import FakeIpPool

log = logging.getLogger("ztun")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SNIFF_PEEK = 16 * 1024


REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    """`name` is the outbound the rules chose (a UDP session keeps one flow per name);
    `action` its kind."""

    action: Action
    outbound: Outbound
    target: Target
    domain: str | None = None
    name: str = REJECT


class LoopDetected(Exception):
    """A flow from ztun's own outbound came back into the TUN."""


class Router:
    def __init__(
        self,
        *,
        outbounds: Mapping[str, Outbound],
        rules: RuleSet | None = None,
        pool: FakeIpPool | None = None,
        sniff_timeout: float | None = 0.3,
        proxy_endpoints: frozenset[tuple[IPAddress, int]] = frozenset(),
    ) -> None:
        """`outbounds` maps every name the rules use to its outbound (`reject` is added)."""
        self.reject = RejectOutbound()
        self._source: Mapping[str, Outbound] = {}
        self.outbounds: dict[str, Outbound] = {}
        self.aliases: Mapping[str, str] = {}
        self.rules = RuleSet()
        self.reconfigure(outbounds, rules or RuleSet())
        self.pool = pool
        self.sniff_timeout = sniff_timeout
        self.proxy_endpoints = proxy_endpoints

    def reconfigure(
        self, outbounds: Mapping[str, Outbound] | None, rules: RuleSet
    ) -> Mapping[str, Outbound] | None:
        """Swap in new outbounds (None: keep them) and rules, together: the rules name
        the outbounds. Returns the outbounds replaced (None when kept); flows already
        open hold theirs and run on."""
        source = self._source if outbounds is None else outbounds
        table: dict[str, Outbound] = {**source, REJECT: self.reject}
        used = {rules.default, *(rule.outbound for rule in rules.rules)}
        missing = sorted(used - table.keys())
        if missing:
            raise ValueError(f"rules name outbounds that do not exist: {', '.join(missing)}")
        old = None if outbounds is None else self._source
        self._source = source  # an OutboundSet also reports health
        # `--proxy direct://`: the name `default` is the outbound `direct` (kind and all).
        self.aliases = getattr(source, "aliases", {})
        self.outbounds, self.rules = table, rules
        self._names: dict[int, str] = {}
        for name, outbound in table.items():  # the first name wins: `direct`, not an alias
            self._names.setdefault(id(outbound), name)
        return old

    @property
    def source(self) -> Mapping[str, Outbound]:
        """The outbounds as last given to `reconfigure` (an OutboundSet in a run)."""
        return self._source

    def name_of(self, outbound: Outbound) -> str:
        """The name the rules know `outbound` by ("?" for one the router never had)."""
        return self._names.get(id(outbound), "?")

    @property
    def outbound_names(self) -> tuple[str, ...]:
        return tuple(self.outbounds)

    def health_snapshot(self) -> list[dict[str, Any]]:
        """Per proxy: name, url, up, since, last_error, active, failures, rtt_ms
        (docs/contracts.md section 2); [] when the outbounds keep no health."""
        snapshot = getattr(self._source, "health_snapshot", None)
        return snapshot() if snapshot is not None else []

    def groups_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per group: policy, members, active (the member new flows go to now)."""
        snapshot = getattr(self._source, "groups_snapshot", None)
        return snapshot() if snapshot is not None else {}

    @property
    def proxy_tcp(self) -> Outbound:
        """Where ztun's own DNS lookups over TCP go: the group ``default`` (the proxy of a
        single ``--proxy``), else the default outbound."""
        return self.outbounds.get(DEFAULT_GROUP) or self.outbounds[self.rules.default]

    def dns_upstream(self, upstream: tuple[str, int]) -> Decision:
        """Where DNS over TCP goes under ``--dns remote``: to the upstream resolver through
        `proxy_tcp`, as ztun's own forwarded queries do, whatever server the app named."""
        name = self.name_of(self.proxy_tcp)
        return Decision(Action.of(name), self.proxy_tcp, Target(*upstream), None, name)

    def decide(
        self, network: str, dst: IPAddress, port: int, domain: str | None = None
    ) -> Decision:
        if (dst, port) in self.proxy_endpoints:
            # ztun's own connection to the proxy must never be routed into the TUN: if
            # it is, carrying it through the proxy would recurse without end.
            raise LoopDetected(
                f"{network} flow to the proxy {dst}:{port} came back into the TUN "
                "(exclude the proxy's address from the routes into ztun)"
            )
        if domain is None and self.pool is not None:
            domain = self.pool.domain_for(dst)
            if domain is None and self.pool.is_fake(dst):
                # A fake address whose name is no longer known (pool recycled): the
                # honest answer is a refusal, not a connection to 198.18.x.x.
                return Decision(Action.REJECT, self.reject, Target.from_ip(dst, port))
        name = self.rules.match(Flow(network, dst, port, domain))  # type: ignore[arg-type]
        name = self.aliases.get(name, name)
        try:
            if domain:
                fake = self.pool is not None and self.pool.is_fake(dst)
                target = Target(domain, port, seen_ip=None if fake else dst)
            else:
                target = Target.from_ip(dst, port)
        except ValueError:
            # A name DNS let through that SOCKS5 cannot carry: refuse the flow.
            return Decision(Action.REJECT, self.reject, Target.from_ip(dst, port))
        return Decision(Action.of(name), self.outbounds[name], target, domain, name)

    async def sniff(self, conn: socket.socket) -> str | None:
        """The domain the app names in its first bytes (TLS SNI, HTTP Host), if it does so
        within the sniff timeout; the bytes stay in the socket (MSG_PEEK)."""
        if not self.sniff_timeout:
            return None
        # Imported on first use: the QUIC sniffer pulls in `cryptography`, megabytes a
        # ztun that never sniffs should not carry.
        from .sniff import Sniffed, Verdict, sniff_stream

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sniff_timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                readable = loop.create_future()
                loop.add_reader(conn.fileno(), _set_once, readable)
                try:
                    await asyncio.wait_for(readable, remaining)
                except TimeoutError:
                    return None
                finally:
                    loop.remove_reader(conn.fileno())
                try:
                    data = conn.recv(SNIFF_PEEK, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return None
                if not data:
                    return None
                result = sniff_stream(data)
                if isinstance(result, Sniffed):
                    return result.domain
                if result is not Verdict.NEED_MORE or len(data) >= SNIFF_PEEK:
                    return None
                # A partial ClientHello: wake only when more than this has arrived (the
                # peeked bytes keep the socket readable, so plain readiness would spin).
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, len(data) + 1)
            return None
        finally:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
