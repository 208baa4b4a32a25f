"""UDP flow policy, sans-IO: which association carries an app's datagrams, and how replies
are addressed back to it.

An app UDP session (one source address and port: full cone) sends to destinations the
engine's rules route to outbounds; each (session, outbound) pair is a *flow*, carried over
one association of that outbound (a SOCKS5 UDP ASSOCIATE, a direct socket). This core
decides -- datagrams, routing decisions and `now` in, events out -- and the engine only
moves bytes (aioquic's split):

* **The open queue.** A new flow's first datagrams wait (at most `queue_limit`) while its
  association is set up, and set-ups wait their turn in FIFO order: at most `max_opening`
  run at once, and only `max_opening_busy` while the TUN is backlogged (`tun_backlogged`).
  Measured (`ztun bench --tests udp-burst`): 3000 new flows in 150 ms through a local
  proxy lost 63 % of their datagrams with no bound -- every set-up (TCP connect, SOCKS5
  handshake, UDP socket; ~0.3 ms of CPU) ran in the same event-loop passes, the loop read
  the TUN only between them, and the kernel's TUN queue (500 packets) overflowed. A fixed
  bound trades one case for the other: 8 kept up with the burst but would open ~50
  associations/s through a proxy 50 ms away; 64 suits that proxy but lost 55 % of the
  burst. While the TUN keeps up, set-ups are waiting on the network, not the CPU, so the
  bound is high; once the reader falls behind it drops until the TUN is drained.
* **Bounded descriptors.** With `max_flows`, opening one more flow closes the least
  recently used one (LRU; activity is the session's last datagram either way, which the
  stack keeps, so datagrams the pump carries without us count too). The order is kept
  lazily: flows are in opening order, and eviction sends a candidate whose session was
  seen since to the back instead (a datagram costs no reordering).
* **Reply-source choice.** A reply to a datagram the app sent to a fake-IP address (a
  domain the proxy resolved) must seem to come from that fake address; a reply from an
  address the app itself used keeps it, even when a fake destination shares its port.
* **Family mapping.** A reply from an IPv6 address to an IPv4 session (an IPv4-mapped
  one) is mapped back, and IPv4 to an IPv6 session becomes ::ffff:a.b.c.d.
* **Route caches.** Destinations routed for good (not by name) may be handed to the TUN
  pump, which then sends their datagrams itself: bounded per flow and in total.

Flow states, and the only transitions (`_TRANSITIONS`): waiting -> opening -> open ->
closed, and any of them -> closed.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .events import UdpDatagram, UdpSession

__all__ = [
    "CloseAssociation",
    "FlowState",
    "LocalProtocolError",
    "OpenAssociation",
    "PumpRoute",
    "SendDatagram",
    "UdpFlow",
    "UdpFlowEvent",
    "UdpFlows",
    "UdpRoute",
    "Unreachable",
]

QUEUE_LIMIT = 64  # datagrams a flow holds while its association is being set up
MAX_OPENING = 64  # association set-ups in flight at once, while the TUN keeps up
MAX_OPENING_BUSY = 8  # ...and while the TUN is backlogged (see the module docstring)
ROUTE_CACHE = 4096  # per flow: destinations remembered (real ones, reply addresses, pump)
PUMP_ROUTES = 65536  # destinations the pump sends to itself, over all flows
DECISION_CACHE = 4096  # routing decisions remembered per (address, port)


class _HasAddress(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


Tgt = TypeVar("Tgt", bound=_HasAddress)  # the engine's target (ztun.outbound.Target)
Out = TypeVar("Out")  # the engine's outbound, compared by identity (hashed as such)


class LocalProtocolError(Exception):
    """The adapter reported something impossible in the flow's state (a bug in it)."""


class FlowState(enum.Enum):
    WAITING = "waiting"  # in the open queue
    OPENING = "opening"  # its association is being set up
    OPEN = "open"
    CLOSED = "closed"


_TRANSITIONS: dict[FlowState, frozenset[FlowState]] = {
    FlowState.WAITING: frozenset({FlowState.OPENING, FlowState.CLOSED}),
    FlowState.OPENING: frozenset({FlowState.OPEN, FlowState.CLOSED}),
    FlowState.OPEN: frozenset({FlowState.CLOSED}),
    FlowState.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class UdpRoute(Generic[Out, Tgt]):
    """What the rules decided for one destination: the outbound and the target to give
    it. `by_name`: the app used a fake-IP address for a domain (the pool may recycle it,
    so neither this decision nor a pump route may be kept)."""

    outbound: Out
    target: Tgt
    by_name: bool = False


@dataclass(eq=False, slots=True)
class UdpFlow(Generic[Out, Tgt]):
    """One app session's datagrams through one outbound."""

    session: UdpSession
    outbound: Out
    state: FlowState = FlowState.WAITING
    # The session's `last_seen` when the flow last went to the back of the LRU order
    # (opened, or found younger by `_make_room`); `last_seen` itself (kept by the stack,
    # both ways, pump traffic included) is its real age.
    ordered_at: float = 0.0
    queue: list[tuple[UdpDatagram, UdpRoute[Out, Tgt]]] = field(default_factory=list)
    # Replies to a datagram sent to a fake-IP domain must seem to come from the fake
    # address the app used: destination port -> fake address.
    fake_sources: dict[int, bytes] = field(default_factory=dict)
    # Addresses this flow sent to: a reply from one of them keeps its address even when
    # a fake-IP destination shares its port.
    real_destinations: set[str] = field(default_factory=set)
    reply_addresses: dict[str, bytes] = field(default_factory=dict)
    pump_routes: list[tuple[bytes, int]] = field(default_factory=list)
    pumpable: bool = False  # the association has a path the pump can send on


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAssociation(Generic[Out, Tgt]):
    """Set up `flow.outbound`'s association, then call `opened` (or `open_failed`)."""

    flow: UdpFlow[Out, Tgt]


@dataclass(frozen=True, slots=True)
class SendDatagram(Generic[Out, Tgt]):
    """Send `payload` to `target` on the flow's (open) association."""

    flow: UdpFlow[Out, Tgt]
    target: Tgt
    payload: bytes


@dataclass(frozen=True, slots=True)
class PumpRoute(Generic[Out, Tgt]):
    """The pump may send the session's later datagrams to dst_addr:dst_port itself, on the
    flow's association, addressed to `target`."""

    flow: UdpFlow[Out, Tgt]
    dst_addr: bytes
    dst_port: int
    target: Tgt


@dataclass(frozen=True, slots=True)
class CloseAssociation(Generic[Out, Tgt]):
    """Close the flow's association (or cancel its set-up) and take back its pump routes
    (`pump_routes`: (address, port) of the session)."""

    flow: UdpFlow[Out, Tgt]
    pump_routes: tuple[tuple[bytes, int], ...]


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Answer the app's datagram with ICMP port unreachable (the outbound refused it)."""

    datagram: UdpDatagram


UdpFlowEvent = (
    OpenAssociation[Out, Tgt]
    | SendDatagram[Out, Tgt]
    | PumpRoute[Out, Tgt]
    | CloseAssociation[Out, Tgt]
    | Unreachable
)


class UdpFlows(Generic[Out, Tgt]):
    """Every UDP flow of one engine; see the module docstring for the policy."""

    def __init__(
        self,
        counters: Counter[str],
        *,
        queue_limit: int = QUEUE_LIMIT,
        max_opening: int = MAX_OPENING,
        max_opening_busy: int = MAX_OPENING_BUSY,
        max_flows: int = 0,
    ) -> None:
        """`max_flows`: 0 for no limit; else opening one more closes the least recently
        used flow. Counters go to `counters` (the engine's)."""
        if not 1 <= max_opening_busy <= max_opening:
            raise ValueError("need 1 <= max_opening_busy <= max_opening")
        self.counters = counters
        self.queue_limit = queue_limit
        self.max_opening = max_opening
        self.max_opening_busy = max_opening_busy
        self._backlogged = False
        self.max_flows = max_flows
        self._flows: OrderedDict[tuple[UdpSession, Out], UdpFlow[Out, Tgt]] = OrderedDict()
        self._by_session: dict[UdpSession, list[UdpFlow[Out, Tgt]]] = {}
        self._waiting: deque[UdpFlow[Out, Tgt]] = deque()
        self._opening = 0
        self._pump_routes = 0
        self._decisions: dict[tuple[bytes, int], UdpRoute[Out, Tgt]] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[UdpFlow[Out, Tgt]]:
        return iter(list(self._flows.values()))

    @property
    def opening(self) -> int:
        return self._opening

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def carries(self, session: UdpSession, outbound: Out) -> bool:
        """Whether `session` has a flow through `outbound` (open, or being set up)."""
        return (session, outbound) in self._flows

    # -- routing decisions -----------------------------------------------------------------

    def decided(self, dst_addr: bytes, dst_port: int) -> UdpRoute[Out, Tgt] | None:
        """The remembered decision for a destination (rules do not change while running)."""
        return self._decisions.get((dst_addr, dst_port))

    def forget_decisions(self) -> None:
        """The rules changed (a reload): decide every destination afresh. Open flows keep
        the outbound they hold."""
        self._decisions.clear()

    def remember(self, dst_addr: bytes, dst_port: int, route: UdpRoute[Out, Tgt]) -> None:
        if route.by_name:
            return  # fake-IP names are re-read: the pool recycles addresses
        if len(self._decisions) >= DECISION_CACHE:
            self._decisions.clear()
        self._decisions[(dst_addr, dst_port)] = route

    # -- datagrams from the app ------------------------------------------------------------

    def datagram(
        self, datagram: UdpDatagram, route: UdpRoute[Out, Tgt], now: float
    ) -> list[UdpFlowEvent[Out, Tgt]]:
        """The app sent `datagram`; the rules send it through `route`.

        A datagram of an open flow touches nothing but the flow (the LRU order is the
        sessions' `last_seen`, which the stack keeps: `_make_room` reads it lazily)."""
        flow = self._flows.get((datagram.session, route.outbound))
        target = route.target
        if flow is not None and flow.state is FlowState.OPEN:  # the common case
            if route.by_name:
                flow.fake_sources[target.port] = datagram.dst_addr
            elif target.host not in flow.real_destinations:
                self._note_real(flow, target.host)
            events: list[UdpFlowEvent[Out, Tgt]] = [SendDatagram(flow, target, datagram.payload)]
            if flow.pumpable and not route.by_name:
                self._maybe_route(flow, datagram.dst_addr, datagram.dst_port, route, events)
            return events
        events = []
        if flow is None:
            flow = self._new_flow(datagram.session, route.outbound, now, events)
        if route.by_name:
            flow.fake_sources[target.port] = datagram.dst_addr
        elif target.host not in flow.real_destinations:
            self._note_real(flow, target.host)
        if flow.state is FlowState.OPEN:
            events.append(SendDatagram(flow, target, datagram.payload))
            self._maybe_route(flow, datagram.dst_addr, datagram.dst_port, route, events)
        elif len(flow.queue) < self.queue_limit:
            flow.queue.append((datagram, route))
        else:
            self.counters["udp_queue_overflow"] += 1
        return events

    def _new_flow(
        self, session: UdpSession, outbound: Out, now: float, events: list[UdpFlowEvent[Out, Tgt]]
    ) -> UdpFlow[Out, Tgt]:
        flow: UdpFlow[Out, Tgt] = UdpFlow(session, outbound, ordered_at=now)
        self._make_room(events)
        self._flows[(session, outbound)] = flow
        self._by_session.setdefault(session, []).append(flow)
        self.counters["udp_sessions_total"] += 1
        if self._waiting or self._opening >= self.max_opening_busy:
            self.counters["udp_open_queued"] += 1
        self._waiting.append(flow)
        self._start_waiting(events)
        return flow

    @staticmethod
    def _note_real(flow: UdpFlow[Out, Tgt], host: str) -> None:
        if len(flow.real_destinations) < ROUTE_CACHE:
            flow.real_destinations.add(host)

    def _maybe_route(
        self,
        flow: UdpFlow[Out, Tgt],
        dst_addr: bytes,
        dst_port: int,
        route: UdpRoute[Out, Tgt],
        events: list[UdpFlowEvent[Out, Tgt]],
    ) -> None:
        if route.by_name or not flow.pumpable:
            return
        if len(flow.pump_routes) >= ROUTE_CACHE or self._pump_routes >= PUMP_ROUTES:
            return
        where = (dst_addr, dst_port)
        if where in flow.pump_routes:
            return
        flow.pump_routes.append(where)
        self._pump_routes += 1
        events.append(PumpRoute(flow, dst_addr, dst_port, route.target))

    # -- the open queue --------------------------------------------------------------------

    def tun_backlogged(self, backlogged: bool) -> list[UdpFlowEvent[Out, Tgt]]:
        """The TUN reader fell behind (frames were left to read after a full batch), or
        caught up again: fewer set-ups run at once while it is behind."""
        events: list[UdpFlowEvent[Out, Tgt]] = []
        if backlogged != self._backlogged:
            self._backlogged = backlogged
            self._start_waiting(events)
        return events

    def _start_waiting(self, events: list[UdpFlowEvent[Out, Tgt]]) -> None:
        limit = self.max_opening_busy if self._backlogged else self.max_opening
        while self._waiting and self._opening < limit:
            flow = self._waiting.popleft()
            self._move(flow, FlowState.OPENING)
            self._opening += 1
            events.append(OpenAssociation(flow))

    def opened(self, flow: UdpFlow[Out, Tgt], *, pumpable: bool) -> list[UdpFlowEvent[Out, Tgt]]:
        """The association is up; `pumpable`: the pump can send on it (an uplink)."""
        events: list[UdpFlowEvent[Out, Tgt]] = []
        if flow.state is FlowState.CLOSED:
            # Closed (evicted, expired) while it was being set up: close what came up.
            events.append(CloseAssociation(flow, ()))
            return events
        self._move(flow, FlowState.OPEN)
        self._opening -= 1
        flow.pumpable = pumpable
        queued, flow.queue = flow.queue, []
        for datagram, route in queued:
            events.append(SendDatagram(flow, route.target, datagram.payload))
            self._maybe_route(flow, datagram.dst_addr, datagram.dst_port, route, events)
        self._start_waiting(events)
        return events

    def open_failed(
        self, flow: UdpFlow[Out, Tgt], *, rejected: bool
    ) -> list[UdpFlowEvent[Out, Tgt]]:
        """The set-up failed. `rejected`: the outbound refuses UDP by rule, and each
        queued datagram gets an ICMP port unreachable; else they are dropped, counted."""
        if flow.state is FlowState.CLOSED:
            return []
        queued = [datagram for datagram, _ in flow.queue]
        flow.queue.clear()
        if not rejected:
            self.counters["udp_open_failed"] += 1
        events = self._close(flow)
        if rejected:
            events.extend(Unreachable(datagram) for datagram in queued)
        return events

    # -- replies ---------------------------------------------------------------------------

    def reply_source(self, flow: UdpFlow[Out, Tgt], host: str, port: int) -> bytes | None:
        """The packed source address, in the session's family, for a reply from host:port
        to write to the app (None: it cannot be addressed; counted)."""
        packed = flow.reply_addresses.get(host)
        if packed is None:
            packed = self._reply_address(flow.session, host)
            if packed is None:
                return None
            if len(flow.reply_addresses) < ROUTE_CACHE:
                flow.reply_addresses[host] = packed
        source_addr = packed
        if host not in flow.real_destinations:
            source_addr = flow.fake_sources.get(port, packed)
        if len(source_addr) != len(flow.session.client_addr):
            source_addr = packed
        return source_addr

    def _reply_address(self, session: UdpSession, host: str) -> bytes | None:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            self.counters["udp_reply_from_domain"] += 1
            return None
        if session.version == 4 and addr.version == 6:
            mapped = addr.ipv4_mapped
            if mapped is None:
                self.counters["udp_reply_family_mismatch"] += 1
                return None
            return mapped.packed
        if session.version == 6 and addr.version == 4:
            return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed).packed
        return addr.packed

    # -- closing ---------------------------------------------------------------------------

    def closed(self, flow: UdpFlow[Out, Tgt]) -> list[UdpFlowEvent[Out, Tgt]]:
        """The association ended (closed by the proxy, or by the engine after a
        CloseAssociation): forget the flow. A later datagram opens a new one."""
        return self._close(flow)

    def session_expired(self, session: UdpSession) -> list[UdpFlowEvent[Out, Tgt]]:
        """The stack expired the session (idle): close every flow of it."""
        events: list[UdpFlowEvent[Out, Tgt]] = []
        for flow in list(self._by_session.get(session, ())):
            events.extend(self._close(flow))
        return events

    def close_all(self) -> list[UdpFlowEvent[Out, Tgt]]:
        events: list[UdpFlowEvent[Out, Tgt]] = []
        for flow in list(self._flows.values()):
            events.extend(self._close(flow))
        return events

    def _make_room(self, events: list[UdpFlowEvent[Out, Tgt]]) -> None:
        """Close least recently used flows until one more fits under max_flows.

        The order is that of the datagrams this core saw; a candidate whose session saw
        later traffic (a reply, a datagram the pump carried) goes to the back instead,
        as its age says (the heap-less version of the stack's lazy idle timers).
        """
        if not self.max_flows:
            return
        flows = self._flows
        checked = 0
        while len(flows) >= self.max_flows:
            key, flow = next(iter(flows.items()))
            seen = flow.session.last_seen
            if seen > flow.ordered_at and checked < len(flows):
                flow.ordered_at = seen
                flows.move_to_end(key)
                checked += 1
                continue
            self.counters["udp_sessions_evicted"] += 1
            events.extend(self._close(flow))

    def _close(self, flow: UdpFlow[Out, Tgt]) -> list[UdpFlowEvent[Out, Tgt]]:
        events: list[UdpFlowEvent[Out, Tgt]] = []
        if flow.state is FlowState.CLOSED:
            return events
        was = flow.state
        self._move(flow, FlowState.CLOSED)
        key = (flow.session, flow.outbound)
        if self._flows.get(key) is flow:
            del self._flows[key]
        siblings = self._by_session.get(flow.session)
        if siblings is not None:
            siblings.remove(flow)
            if not siblings:
                del self._by_session[flow.session]
        self.counters["udp_queue_dropped"] += len(flow.queue)
        flow.queue.clear()
        if was is FlowState.WAITING:
            self._waiting.remove(flow)
            return events  # nothing was opened: nothing to close
        routes = tuple(flow.pump_routes)
        self._pump_routes -= len(routes)
        flow.pump_routes.clear()
        events.append(CloseAssociation(flow, routes))
        if was is FlowState.OPENING:
            self._opening -= 1
            self._start_waiting(events)
        return events

    @staticmethod
    def _move(flow: UdpFlow[Out, Tgt], state: FlowState) -> None:
        if state not in _TRANSITIONS[flow.state]:
            raise LocalProtocolError(f"UDP flow {flow.state.value} -> {state.value}")
        flow.state = state
