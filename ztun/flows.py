"""The open flows of one engine, as `ztun flows`, `ztun status` and the metrics see them.

One `FlowRecord` per open flow (a TCP relay, a UDP flow, a forwarded ICMP echo id). The
table costs nothing per packet: a record is made once per flow and its byte counts are
not copied into it, they are read live from the object that moves the bytes (its
`meter`: the TCP `Relay`, the UDP flow), and only when someone asks. A record leaves the
table when its flow ends; `on_closed` (set only with `--log-flows`) is then handed the
record, frozen, to format one line -- nothing is formatted otherwise.

Per-outbound opened counts and the connect-time histogram (SYN to the proxy's CONNECT
reply) live here too: one increment per flow, not per packet (docs/contracts.md 3).
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Upper bounds (seconds) of the connect-time histogram's buckets; +Inf is implied.
CONNECT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
PROTOS = ("tcp", "udp", "icmp")


class FlowState(enum.StrEnum):
    CONNECTING = "connecting"  # routed or being routed; the outbound is not open yet
    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one side sent its FIN, the other still sends
    CLOSING = "closing"  # being torn down


class Meter(Protocol):
    """What moves a flow's bytes, read live: a `Relay`, a UDP flow."""

    @property
    def bytes_up(self) -> int: ...

    @property
    def bytes_down(self) -> int: ...

    @property
    def half_closed(self) -> bool: ...


#: (address, port): the address as text or an `ipaddress` object, formatted when asked.
Endpoint = tuple[object, int]


def endpoint(host: object, port: int) -> str:
    """`ip:port`, or `[v6]:port` (RFC 3986's form, so the port is never ambiguous)."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@dataclass(eq=False, slots=True)
class FlowRecord:
    id: int
    proto: str
    # Kept as given and formatted only when someone asks: a record costs the accept
    # path no string work.
    source: Endpoint
    target: Endpoint
    started: float
    domain: str | None = None
    outbound: str | None = None  # None until routed
    meter: Meter | None = None
    # How `ztun close` ends this flow (a TCP reset, a UDP flow's close); None: cannot.
    closer: Callable[[], object] | None = None
    phase: FlowState = FlowState.CONNECTING  # as the engine set it; see `state`
    # Set when the flow ends: its final byte counts, how long it lived and why it ended.
    final_up: int = 0
    final_down: int = 0
    ended: float | None = None
    reason: str | None = None

    @property
    def src(self) -> str:
        return endpoint(*self.source)

    @property
    def dst(self) -> str:
        return endpoint(*self.target)

    @property
    def bytes_up(self) -> int:
        meter = self.meter
        return meter.bytes_up if meter is not None and self.ended is None else self.final_up

    @property
    def bytes_down(self) -> int:
        meter = self.meter
        return meter.bytes_down if meter is not None and self.ended is None else self.final_down

    @property
    def state(self) -> FlowState:
        state = self.phase
        if state is FlowState.OPEN and self.meter is not None and self.meter.half_closed:
            return FlowState.HALF_CLOSED
        return state

    def as_dict(self, now: float) -> dict[str, Any]:
        """The JSON object of `ztun flows --json` (docs/control.md)."""
        end = self.ended if self.ended is not None else now
        return {
            "id": self.id,
            "proto": self.proto,
            "src": self.src,
            "dst": self.dst,
            "domain": self.domain,
            "outbound": self.outbound,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "age_s": round(max(0.0, end - self.started), 3),
            "state": str(self.state),
        }


@dataclass(slots=True)
class Histogram:
    """Cumulative-ready bucket counts (Prometheus histogram semantics: `le` bounds)."""

    bounds: tuple[float, ...] = CONNECT_BUCKETS
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "sum": self.total,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        return cls(
            tuple(float(b) for b in data["bounds"]),
            [int(c) for c in data["counts"]],
            float(data["sum"]),
            int(data["count"]),
        )

    def merge(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets cannot be merged")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.count += other.count


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """`ztun flows --proto P --dst CIDR --domain D`; an empty filter takes every flow."""

    proto: str | None = None
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    domain: str | None = None  # the flow's domain, or a parent domain of it

    @classmethod
    def from_request(cls, args: dict[str, Any]) -> FlowFilter:
        """From the control request's fields; ValueError names a bad one."""
        proto = args.get("proto")
        if proto is not None and proto not in PROTOS:
            raise ValueError(f"proto {proto!r} is not one of {', '.join(PROTOS)}")
        dst = args.get("dst")
        network = None
        if dst is not None:
            try:
                network = ipaddress.ip_network(str(dst), strict=False)
            except ValueError as exc:
                raise ValueError(f"dst {dst!r} is not a CIDR ({exc})") from None
        domain = args.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise ValueError("domain must be a string")
        return cls(proto, network, domain.strip(".").lower() if domain else None)

    def matches(self, record: FlowRecord) -> bool:
        if self.proto is not None and record.proto != self.proto:
            return False
        if self.dst is not None and not _in_network(record.target, self.dst):
            return False
        if self.domain is not None:
            name = record.domain or ""
            if name != self.domain and not name.endswith("." + self.domain):
                return False
        return True


def _in_network(target: Endpoint, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    host = target[0]
    try:
        address = (
            host
            if isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address)
            else ipaddress.ip_address(str(host))
        )
    except ValueError:
        return False
    return address in network


class FlowTable:
    """The open flows of one engine, by id; ids count up from 1 and are never reused."""

    def __init__(self, on_closed: Callable[[FlowRecord], None] | None = None) -> None:
        self._records: dict[int, FlowRecord] = {}
        self._next_id = 1
        self.on_closed = on_closed
        self.opened: Counter[tuple[str, str]] = Counter()  # (proto, outbound) -> flows
        self.connect_seconds = Histogram()
        # Payload bytes of flows that ended, per (proto, "up"/"down"): with the live
        # records' bytes, every byte the table ever saw.
        self.closed_bytes: Counter[tuple[str, str]] = Counter()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(list(self._records.values()))

    def get(self, flow_id: int) -> FlowRecord | None:
        return self._records.get(flow_id)

    def add(
        self,
        proto: str,
        src: Endpoint,
        dst: Endpoint,
        now: float,
        *,
        domain: str | None = None,
        closer: Callable[[], object] | None = None,
    ) -> FlowRecord:
        record = FlowRecord(self._next_id, proto, src, dst, now, domain, closer=closer)
        self._next_id += 1
        self._records[record.id] = record
        return record

    def routed(self, record: FlowRecord, outbound: str, domain: str | None = None) -> None:
        """The rules chose `outbound` for the flow: it counts as opened through it."""
        record.outbound = outbound
        if domain is not None:
            record.domain = domain
        self.opened[(record.proto, outbound)] += 1

    def connected(
        self, record: FlowRecord, meter: Meter, connect_seconds: float | None = None
    ) -> None:
        """The outbound is open and `meter` moves the bytes from now on."""
        record.meter = meter
        record.phase = FlowState.OPEN
        if connect_seconds is not None:
            self.connect_seconds.observe(connect_seconds)

    def remove(self, record: FlowRecord, now: float, reason: str) -> None:
        """The flow ended (`reason`: `eof`, `reset`, `closed`, `rejected`, ...)."""
        if self._records.pop(record.id, None) is None:
            return
        record.final_up, record.final_down = record.bytes_up, record.bytes_down
        record.ended = now
        record.reason = record.reason or reason  # `close` said why first
        record.phase = FlowState.CLOSING
        record.meter = None
        record.closer = None
        self.closed_bytes[(record.proto, "up")] += record.final_up
        self.closed_bytes[(record.proto, "down")] += record.final_down
        if self.on_closed is not None:
            self.on_closed(record)

    def close(self, flow_id: int) -> bool:
        """End the flow with `flow_id` (a TCP reset, a UDP flow closed); False: no such
        flow, or one that cannot be closed from here."""
        record = self._records.get(flow_id)
        if record is None or record.closer is None:
            return False
        record.phase = FlowState.CLOSING
        record.reason = "closed"
        record.closer()
        return True

    # -- reading ---------------------------------------------------------------------------

    def select(self, flow_filter: FlowFilter | None = None) -> list[FlowRecord]:
        records = list(self._records.values())
        if flow_filter is None:
            return records
        return [r for r in records if flow_filter.matches(r)]

    def active(self) -> dict[str, int]:
        counts = dict.fromkeys(PROTOS, 0)
        for record in self._records.values():
            counts[record.proto] += 1
        return counts

    def live_bytes(self) -> Counter[tuple[str, str]]:
        """(proto, direction) -> payload bytes of every flow, ended or open."""
        total = Counter(self.closed_bytes)
        for record in self._records.values():
            total[(record.proto, "up")] += record.bytes_up
            total[(record.proto, "down")] += record.bytes_down
        return total

    def top(self, count: int) -> list[FlowRecord]:
        """The `count` flows that moved the most bytes (the busiest, for `ztun status`)."""
        return sorted(self._records.values(), key=lambda r: -(r.bytes_up + r.bytes_down))[:count]

    def summary(self) -> dict[str, Any]:
        """The table's part of a status reply (merged over workers by `merge_summaries`)."""
        return {
            "active": self.active(),
            "opened": [
                {"proto": proto, "outbound": outbound, "count": n}
                for (proto, outbound), n in sorted(self.opened.items())
            ],
            "bytes": [
                {"proto": proto, "direction": direction, "bytes": n}
                for (proto, direction), n in sorted(self.live_bytes().items())
            ],
            "connect_seconds": self.connect_seconds.as_dict(),
        }


def merge_summaries(summaries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One summary from several engines' (workers'): counts add up."""
    active: Counter[str] = Counter()
    opened: Counter[tuple[str, str]] = Counter()
    moved: Counter[tuple[str, str]] = Counter()
    histogram: Histogram | None = None
    for summary in summaries:
        active.update(summary["active"])
        for row in summary["opened"]:
            opened[(row["proto"], row["outbound"])] += row["count"]
        for row in summary["bytes"]:
            moved[(row["proto"], row["direction"])] += row["bytes"]
        part = Histogram.from_dict(summary["connect_seconds"])
        if histogram is None:
            histogram = part
        else:
            histogram.merge(part)
    return {
        "active": {proto: active.get(proto, 0) for proto in PROTOS},
        "opened": [{"proto": p, "outbound": o, "count": n} for (p, o), n in sorted(opened.items())],
        "bytes": [{"proto": p, "direction": d, "bytes": n} for (p, d), n in sorted(moved.items())],
        "connect_seconds": (histogram or Histogram()).as_dict(),
    }
