"""Where a flow goes: rules, fake-IP domains, sniffed names and the loop guard.

The engine asks once per TCP connection (after an optional, bounded sniff of its first
bytes) and once per UDP datagram destination; the answer is an outbound and the target
to give it -- a domain when one is known, so the proxy resolves it (remote DNS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .outbound import Outbound, RejectOutbound, Target
from .rules import Action, Flow, RuleSet

if TYPE_CHECKING:
    from .dns import FakeIpPool

log = logging.getLogger("ztun")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SNIFF_PEEK = 16 * 1024


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    outbound: Outbound
    target: Target
    domain: str | None = None


class LoopDetected(Exception):
    """A flow from ztun's own outbound came back into the TUN."""


class Router:
    def __init__(
        self,
        *,
        proxy_tcp: Outbound,
        proxy_udp: Outbound,
        direct: Outbound,
        rules: RuleSet | None = None,
        pool: FakeIpPool | None = None,
        sniff_timeout: float | None = 0.3,
        proxy_endpoints: frozenset[tuple[IPAddress, int]] = frozenset(),
    ) -> None:
        self.proxy_tcp = proxy_tcp
        self.proxy_udp = proxy_udp
        self.direct = direct
        self.reject = RejectOutbound()
        self.rules = rules or RuleSet()
        self.pool = pool
        self.sniff_timeout = sniff_timeout
        self.proxy_endpoints = proxy_endpoints

    def _outbound(self, action: Action, network: str) -> Outbound:
        if action is Action.DIRECT:
            return self.direct
        if action is Action.REJECT:
            return self.reject
        return self.proxy_tcp if network == "tcp" else self.proxy_udp

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
        action = self.rules.match(Flow(network, dst, port, domain))  # type: ignore[arg-type]
        try:
            target = Target(domain, port) if domain else Target.from_ip(dst, port)
        except ValueError:
            # A name DNS let through that SOCKS5 cannot carry: refuse the flow.
            return Decision(Action.REJECT, self.reject, Target.from_ip(dst, port))
        return Decision(action, self._outbound(action, network), target, domain)

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
