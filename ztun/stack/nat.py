"""The TCP NAT table of the system stack: app flows <-> hairpin ports, with expiry.

An app flow (client:cport -> dst:dport) is given a NAT port N; the kernel listener then
sees a connection from peer:N. Lookups go both ways: by flow for packets from the app,
by N for packets from the listener and for `accept()`. Ports are handed out round-robin
so a port comes back into use as late as possible (the kernel may still hold the old
connection in TIME_WAIT).

With `--workers N` each worker owns a shard of the port space: worker k hands out only
ports with `port % N == k`, so the TUN's steering program can send the listener's
answers (destination `peer:nat_port`) to the worker that holds the entry.

States: PENDING (SYN seen, not yet accepted: expires if the accept never comes),
ACTIVE (owned by a relay: never expires here), CLOSING (the relay ended; the entry
lingers so the last FIN/ACKs still translate).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from ..wire.checksum import checksum_delta
from .events import TcpSession

PENDING, ACTIVE, CLOSING = 0, 1, 2

FIRST_NAT_PORT = 1024
LAST_NAT_PORT = 65535

FlowKey = tuple[bytes, int, bytes, int]


class NatExhausted(Exception):
    """Every hairpin port of a family is in use."""


class TcpNatTable:
    def __init__(
        self,
        version: int,
        server_addr: bytes,
        peer_addr: bytes,
        listen_port: int,
        *,
        pending_timeout: float = 30.0,
        closing_linger: float = 30.0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"NAT shard {index} of {count}")
        self.version = version
        self.server_addr = server_addr
        self.peer_addr = peer_addr
        self.listen_port = listen_port
        self.pending_timeout = pending_timeout
        self.closing_linger = closing_linger
        self._by_flow: dict[FlowKey, TcpSession] = {}
        self._by_port: dict[int, TcpSession] = {}
        self._stride = count
        # The shard's ports: FIRST_NAT_PORT rounded up to the shard's residue, then
        # every `count`-th port up to LAST_NAT_PORT.
        self._first_port = FIRST_NAT_PORT + (index - FIRST_NAT_PORT) % count
        self._span = (LAST_NAT_PORT - self._first_port) // count + 1
        self._cursor = self._first_port
        # (deadline, nat_port) with lazy invalidation: an entry whose session moved on is
        # skipped when popped.
        self._timers: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._by_port)

    def __iter__(self) -> Iterator[TcpSession]:
        return iter(list(self._by_port.values()))

    def by_flow(self, key: FlowKey) -> TcpSession | None:
        return self._by_flow.get(key)

    def by_port(self, nat_port: int) -> TcpSession | None:
        return self._by_port.get(nat_port)

    def open(self, key: FlowKey, now: float) -> TcpSession:
        """Allocate a NAT port for a new app flow (a SYN) and precompute its deltas."""
        port = self._allocate()
        client_addr, client_port, dst_addr, dst_port = key
        session = TcpSession(
            version=self.version,
            client_addr=client_addr,
            client_port=client_port,
            dst_addr=dst_addr,
            dst_port=dst_port,
            nat_port=port,
            state=PENDING,
            deadline=now + self.pending_timeout,
        )
        pp = port.to_bytes(2, "big")
        lp = self.listen_port.to_bytes(2, "big")
        cp = client_port.to_bytes(2, "big")
        dp = dst_port.to_bytes(2, "big")
        # Transport checksums cover the pseudo-header addresses and both ports; every
        # field is 16-bit aligned, so one delta over the concatenation covers them all.
        out_old = client_addr + dst_addr + cp + dp
        out_new = self.peer_addr + self.server_addr + pp + lp
        session.l4_delta_out = checksum_delta(out_old, out_new)
        session.l4_delta_in = checksum_delta(out_new, out_old)
        app_addrs = client_addr + dst_addr
        hairpin_addrs = self.peer_addr + self.server_addr
        session.ip_delta_out = checksum_delta(app_addrs, hairpin_addrs)
        session.ip_delta_in = checksum_delta(hairpin_addrs, app_addrs)
        old = self._by_flow.get(key)
        if old is not None:
            # The app reused its port while the previous flow lingers: the old entry keeps
            # its NAT port (late packets of the listener still map) but loses the key.
            old.state = CLOSING
        self._by_flow[key] = session
        self._by_port[port] = session
        heapq.heappush(self._timers, (session.deadline, port))
        return session

    def activate(self, session: TcpSession) -> None:
        session.state = ACTIVE
        session.deadline = float("inf")

    def close(self, session: TcpSession, now: float) -> None:
        """The relay is done; keep translating the closing handshake for a while."""
        if session.state == CLOSING:
            return
        session.state = CLOSING
        session.deadline = now + self.closing_linger
        heapq.heappush(self._timers, (session.deadline, session.nat_port))

    def expire(self, now: float) -> list[TcpSession]:
        expired: list[TcpSession] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, port = heapq.heappop(timers)
            session = self._by_port.get(port)
            if session is None or session.deadline != deadline:
                continue
            self._remove(session)
            expired.append(session)
        return expired

    def _remove(self, session: TcpSession) -> None:
        del self._by_port[session.nat_port]
        key = (session.client_addr, session.client_port, session.dst_addr, session.dst_port)
        if self._by_flow.get(key) is session:
            del self._by_flow[key]

    def _allocate(self) -> int:
        if len(self._by_port) >= self._span:
            raise NatExhausted(f"all {self._span} IPv{self.version} NAT ports in use")
        port = self._cursor
        while port in self._by_port:
            port = self._next_port(port)
        self._cursor = self._next_port(port)
        return port

    def _next_port(self, port: int) -> int:
        following = port + self._stride
        return following if following <= LAST_NAT_PORT else self._first_port
