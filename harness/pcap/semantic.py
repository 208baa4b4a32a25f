"""The semantic tier: what must hold of kernel-generated traffic, not how it was segmented.

Two captures of the same TCP exchange between two Linux kernels differ in ways that are
not regressions: a delayed ACK here, a window update there, an ACK merged into a FIN,
a retransmission. What must *not* differ is, per direction of each TCP connection:

* the control sequence -- SYN, FIN, RST, each at its relative sequence number
  (``S@0 FA@1025``: the FIN sits right after 1024 bytes), retransmissions collapsed;
* the options that matter -- which options the SYN carries, and the MSS value (after
  clamping), but not the window scale value (it follows the host's memory);
* the reassembled payload -- length and hash (SOCKS5 decoded, as in the strict tier).

Non-TCP flows (UDP, ICMP) are not segmented by a kernel: they keep their strict lines.
Predicates from the profile (``count(tcp.flags == SA)``, ``all(checksum != bad)``) are
evaluated over every packet; an ``expect`` in the profile is checked against the
capture itself, so a golden recorded with a wrong count cannot hide it.
"""

from __future__ import annotations

from harness.pcap.match import Clause, matches, parse_match
from harness.pcap.normalise import Flow, TcpSegment, Trace
from harness.pcap.payload import (
    RawStream,
    SocksClientStream,
    SocksServerStream,
    SocksSession,
    Stream,
)
from harness.pcap.profile import Predicate

__all__ = [
    "Clause",
    "evaluate",
    "expectation_failures",
    "matches",
    "parse_match",
    "semantic_text",
]

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
SEQ_SPACE = 1 << 32
MAX_HOLE = 1 << 24
"""Larger gaps are not zero-filled: such a segment lies outside any plausible stream."""
DIRECTIONS = (">", "<")


def evaluate(pred: Predicate, trace: Trace) -> int | bool:
    clauses = parse_match(pred.match)
    hits = [matches(clauses, p.fields) for p in trace.packets]
    return sum(hits) if pred.kind == "count" else all(hits)


def _render_value(value: int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def expectation_failures(trace: Trace) -> list[str]:
    """Predicates whose ``expect`` the capture does not meet (empty: all met)."""
    failures: list[str] = []
    for pred in trace.profile.predicates:
        if pred.expect is None:
            continue
        value = evaluate(pred, trace)
        if value != pred.expect:
            failures.append(
                f"{pred.label} = {_render_value(value)}, profile expects "
                f"{_render_value(pred.expect)} ({pred.why})"
            )
    return failures


# --------------------------------------------------------------------------- TCP summary


def _control(segments: list[TcpSegment], *, peer_reset: bool = False) -> str:
    """``S@0 FA@1025``; with ``peer_reset`` (mask tcp.close-race) FINs are left out."""
    events: list[str] = []
    for seg in segments:
        if not seg.flags & (SYN | FIN | RST):
            continue
        if peer_reset and seg.flags & FIN and not seg.flags & (SYN | RST):
            continue
        letters = "".join(
            c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (ACK, "A")) if seg.flags & bit
        )
        event = f"{letters}@{seg.seq}"
        if event not in events:  # a retransmitted SYN or FIN is the same event
            events.append(event)
    return " ".join(events) or "none"


def _options(segments: list[TcpSegment]) -> str:
    for seg in segments:
        if seg.flags & SYN:
            return ",".join(seg.options) or "none"
    return "no SYN seen"


def _reassemble(segments: list[TcpSegment]) -> tuple[bytes, list[str]]:
    """The byte stream of one direction, in sequence order, and notes on holes."""
    pieces = sorted((s.seq, s.payload) for s in segments if s.payload)
    start = 1 if any(s.flags & SYN for s in segments) else (pieces[0][0] if pieces else 0)
    stream = bytearray()
    notes: list[str] = []
    for seq, payload in pieces:
        offset = (seq - start) % SEQ_SPACE
        if offset - len(stream) > MAX_HOLE:  # before the start (wrapped), or far beyond
            notes.append(f"{len(payload)} bytes at {seq}, outside the stream")
            continue
        if offset > len(stream):
            notes.append(f"hole of {offset - len(stream)} bytes at {start + len(stream)}")
            stream += bytes(offset - len(stream))
        stream[offset : offset + len(payload)] = payload
    return bytes(stream), notes


def _fresh_stream(kind: Stream | None, session: SocksSession | None, masked: bool) -> Stream:
    if session is not None and isinstance(kind, SocksClientStream):
        return SocksClientStream(session)
    if session is not None and isinstance(kind, SocksServerStream):
        return SocksServerStream(session)
    return RawStream(masked)


def _tcp_summary(flow: Flow, trace: Trace) -> list[str]:
    by_dir: dict[str, list[TcpSegment]] = {d: [] for d in DIRECTIONS}
    bad: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
    for packet in flow.packets:
        if packet.tcp is not None:
            by_dir[packet.tcp.direction].append(packet.tcp)
            bad[packet.tcp.direction] += packet.checksum == "bad"
    masked = trace.profile.masked("payload")
    session = None
    if flow.socks is not None:
        session = SocksSession(flow.socks.names, flow.socks.server_addr, masked)
    # The client side first: the server's reply decoding reads what the request asked.
    order = sorted(DIRECTIONS, key=lambda d: not isinstance(flow.streams.get(d), SocksClientStream))
    race = trace.profile.masked("tcp.close-race")
    rendered: dict[str, list[str]] = {}
    for direction in order:
        segments = by_dir[direction]
        other = by_dir["<" if direction == ">" else ">"]
        peer_reset = race and any(s.flags & RST for s in other)
        data, notes = _reassemble(segments)
        stream = _fresh_stream(flow.streams.get(direction), session, masked)
        items = notes + stream.feed(data)
        rendered[direction] = [
            f"  {direction} control {_control(segments, peer_reset=peer_reset)}",
            f"  {direction} options {_options(segments)}",
            f"  {direction} data {'; '.join(items) if items else 'none'}",
        ]
        if bad[direction]:  # say where: "4 bad" alone does not tell who wrote them
            rendered[direction].append(f"  {direction} bad checksums {bad[direction]}")
    return [line for d in DIRECTIONS for line in rendered[d]]


def semantic_text(trace: Trace) -> str:
    """The semantic tier's text (what a semantic profile compares)."""
    lines = [f"bad checksums: {trace.bad_checksums}"]
    for flow in trace.flows:
        lines.append(f"flow {flow.number}: {flow.header}")
        if flow.proto == "tcp":
            lines += _tcp_summary(flow, trace)
        else:
            lines += [f"  {p.line}" for p in flow.packets if not p.hidden]
    for pred in trace.profile.predicates:
        value = evaluate(pred, trace)
        line = f"{pred.label} = {_render_value(value)}"
        if pred.expect is not None and value != pred.expect:
            line += f"  (profile expects {_render_value(pred.expect)})"
        lines.append(line)
    return "\n".join(lines) + "\n"
