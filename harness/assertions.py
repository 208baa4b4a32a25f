"""End-to-end assertions with failure messages that say what was wrong, where.

* :func:`assert_checksums_ok` -- every IPv4/TCP/UDP/ICMP/ICMPv6 checksum in a capture,
  verified by :mod:`harness.decode`'s own ones'-complement code.
* :func:`assert_routed_via` -- a flow was carried by one interface and leaked on no other.
* :func:`assert_socks5_roundtrip` -- the recording proxy saw the request to the target and
  the bytes at both ends hash the same.

They raise ``AssertionError`` (pytest shows the message as is) and mark themselves with
``__tracebackhide__`` so the report points at the test line, not in here.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from harness.decode import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    DecodeError,
    IpPacket,
    decode_ip,
    packets_of,
    safe_summary,
    verify_checksums,
)
from harness.peers.recording import Socks5Request
from harness.timescale import scaled

MAX_LISTED = 20  # bad packets listed in one message; the rest are counted
HEX_PREFIX = 128  # bytes of the first bad packet shown as hex
ROUNDTRIP_POLL = 0.02  # seconds between reads of the proxy log while waiting
DEFAULT_ROUNDTRIP_WAIT = 10.0


# --------------------------------------------------------------------------- checksums


def assert_checksums_ok(
    pcap_path: str | Path,
    *,
    where: Callable[[IpPacket], bool] | None = None,
    allow_offload: bool = False,
    min_packets: int = 1,
) -> int:
    """Every checksum of every IP packet in ``pcap_path`` is right; returns packets checked.

    ``where`` limits the check to packets it accepts (e.g. leave out packets a test
    injected broken on purpose). ``allow_offload`` accepts partial checksums (see
    :func:`harness.decode.verify_checksums`); off by default because test namespaces turn
    offloads off so captures hold real checksums. ``min_packets`` guards against a
    vacuous pass on an empty capture.
    """
    __tracebackhide__ = True
    checked = 0
    bad: list[tuple[int, bytes, tuple[str, ...]]] = []
    for frame, data in packets_of(pcap_path):
        if where is not None:
            try:
                if not where(decode_ip(data)):
                    continue
            except DecodeError:
                pass  # undecodable bytes are always checked (and reported)
        checked += 1
        verdict = verify_checksums(data, allow_offload=allow_offload)
        if verdict.problems:
            bad.append((frame.index, data, verdict.problems))
    if checked < min_packets:
        raise AssertionError(
            f"{pcap_path}: {checked} IP packets to check, expected at least {min_packets}"
        )
    if bad:
        lines = [f"{len(bad)} of {checked} packets in {pcap_path} have bad checksums:"]
        for index, data, problems in bad[:MAX_LISTED]:
            lines.append(f"  #{index} {safe_summary(data)}: {'; '.join(problems)}")
        if len(bad) > MAX_LISTED:
            lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
        first = bad[0][1]
        lines.append(
            f"first bad packet (#{bad[0][0]}) hex: {first[:HEX_PREFIX].hex()}"
            + (" ..." if len(first) > HEX_PREFIX else "")
        )
        raise AssertionError("\n".join(lines))
    return checked


# --------------------------------------------------------------------------- routing


ProtoName = Literal["tcp", "udp", "icmp"]
_PROTOS: dict[str, tuple[int, ...]] = {
    "tcp": (PROTO_TCP,),
    "udp": (PROTO_UDP,),
    "icmp": (PROTO_ICMP, PROTO_ICMPV6),
}


def _same_addr(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True, slots=True)
class Flow:
    """Which packets belong to a flow; unset fields match anything.

    ``both_directions`` also matches the replies (src/dst and ports swapped), which is
    what "this flow went via X" means for a connection.
    """

    proto: ProtoName | None = None
    dst: str | None = None
    dport: int | None = None
    src: str | None = None
    sport: int | None = None
    both_directions: bool = True

    def _one_way(
        self, p: IpPacket, src: str | None, sport: int | None, dst: str | None, dport: int | None
    ) -> bool:
        return (
            (src is None or _same_addr(p.src, src))
            and (dst is None or _same_addr(p.dst, dst))
            and (sport is None or p.sport == sport)
            and (dport is None or p.dport == dport)
        )

    def matches(self, p: IpPacket) -> bool:
        if self.proto is not None and p.protocol not in _PROTOS[self.proto]:
            return False
        if self._one_way(p, self.src, self.sport, self.dst, self.dport):
            return True
        return self.both_directions and self._one_way(p, self.dst, self.dport, self.src, self.sport)

    def __str__(self) -> str:
        def end(addr: str | None, port: int | None) -> str:
            a = addr or "*"
            a = f"[{a}]" if ":" in a else a
            return f"{a}:{port}" if port is not None else a

        arrow = "<>" if self.both_directions else ">"
        ends = f"{end(self.src, self.sport)} {arrow} {end(self.dst, self.dport)}"
        return f"{self.proto or 'ip'} {ends}"


def _matching(path: str | Path, flow: Flow) -> tuple[int, list[tuple[int, IpPacket]]]:
    total, found = 0, []
    for frame, data in packets_of(path):
        total += 1
        try:
            packet = decode_ip(data)
        except DecodeError:
            continue
        if flow.matches(packet):
            found.append((frame.index, packet))
    return total, found


def assert_routed_via(
    pcaps: Mapping[str, str | Path],
    flow: Flow,
    via: str,
    *,
    min_packets: int = 1,
) -> int:
    """``flow`` appears in the capture of interface ``via`` and in no other capture.

    ``pcaps`` maps interface name to its capture file (one capture per interface, taken
    during the same traffic). Returns how many packets of the flow ``via`` carried.
    """
    __tracebackhide__ = True
    if via not in pcaps:
        raise AssertionError(f"no capture for interface {via!r}; captured: {sorted(pcaps)}")
    total, on_via = _matching(pcaps[via], flow)
    problems = []
    if len(on_via) < min_packets:
        problems.append(
            f"flow {flow} not seen on {via}: {len(on_via)} of {total} captured packets "
            f"matched, expected at least {min_packets}"
        )
    for iface, path in sorted(pcaps.items()):
        if iface == via:
            continue
        seen, leaked = _matching(path, flow)
        if leaked:
            listed = "".join(f"\n    #{i} {p.summary()}" for i, p in leaked[:5])
            more = f"\n    ... and {len(leaked) - 5} more" if len(leaked) > 5 else ""
            problems.append(
                f"flow {flow} leaked on {iface}: {len(leaked)} of {seen} packets{listed}{more}"
            )
    if problems:
        raise AssertionError("\n".join(problems))
    return len(on_via)


# --------------------------------------------------------------------------- SOCKS5


class RecordsRequests(Protocol):
    """Anything with ``requests()``: the in-process server or the started process handle."""

    def requests(self) -> list[Socks5Request]: ...


def _target_parts(target: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(target, tuple):
        return target[0], int(target[1])
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _is_target(request_host: str, request_port: int, host: str, port: int) -> bool:
    return request_port == port and _same_addr(request_host, host)


def _describe(request: Socks5Request) -> str:
    base = (
        f"#{request.id} {request.command} {request.target} from {request.client} "
        f"-> {request.reply_name}"
    )
    if request.command == "CONNECT":
        state = f"closed ({request.end})" if request.closed else "open"
        base += (
            f", {state}, to_target {request.bytes_to_target} B "
            f"sha256 {request.sha256_to_target}, from_target {request.bytes_from_target}"
            f" B sha256 {request.sha256_from_target}"
        )
    for stats in request.udp.values():
        base += (
            f"\n      udp {stats.target}: to_target {stats.datagrams_to_target} dgrams "
            f"{stats.bytes_to_target} B sha256 {stats.sha256_to_target}, from_target "
            f"{stats.datagrams_from_target} dgrams {stats.bytes_from_target} B sha256 "
            f"{stats.sha256_from_target}"
        )
    return base


def _connect_matches(
    r: Socks5Request, host: str, port: int, sent: str | None, received: str | None
) -> bool:
    return (
        r.command == "CONNECT"
        and r.succeeded
        and r.closed
        and _is_target(r.target_host, r.target_port, host, port)
        and (sent is None or r.sha256_to_target == sent)
        and (received is None or r.sha256_from_target == received)
    )


def _udp_matches(
    r: Socks5Request, host: str, port: int, sent: str | None, received: str | None
) -> bool:
    if r.command != "UDP ASSOCIATE" or not r.succeeded:
        return False
    for stats in r.udp.values():
        t_host, t_port = _target_parts(stats.target)
        if (
            _is_target(t_host, t_port, host, port)
            and (sent is None or stats.sha256_to_target == sent)
            and (received is None or stats.sha256_from_target == received)
        ):
            return True
    return False


def assert_socks5_roundtrip(
    recording_server: RecordsRequests,
    target: str | tuple[str, int],
    sent_sha256: str | None,
    received_sha256: str | None,
    *,
    command: Literal["CONNECT", "UDP ASSOCIATE"] | None = None,
    timeout: float = DEFAULT_ROUNDTRIP_WAIT,
) -> Socks5Request:
    """The proxy relayed a round trip to ``target`` whose bytes hash as the ends saw them.

    ``sent_sha256`` is the sha256 of what the client sent (the proxy's ``to_target``),
    ``received_sha256`` of what the client received (``from_target``); None skips that
    direction. For UDP the hash is over the payloads concatenated in order. ``command``
    None accepts a CONNECT or a UDP ASSOCIATE. Waits up to ``timeout`` for the proxy to
    log the end of the relay (it logs byte counts when a connection closes).
    """
    __tracebackhide__ = True
    host, port = _target_parts(target)
    timeout = scaled(timeout)  # --time-scale
    deadline = time.monotonic() + timeout
    while True:
        requests = recording_server.requests()
        for r in requests:
            if command in (None, "CONNECT") and _connect_matches(
                r, host, port, sent_sha256, received_sha256
            ):
                return r
            if command in (None, "UDP ASSOCIATE") and _udp_matches(
                r, host, port, sent_sha256, received_sha256
            ):
                return r
        if time.monotonic() >= deadline:
            break
        time.sleep(ROUNDTRIP_POLL)  # noqa: sleep-ok - the log lives in another process/host
    wanted = command or "CONNECT or UDP ASSOCIATE"
    lines = [
        f"the proxy relayed no {wanted} round trip to {host}:{port} with "
        f"sent sha256 {sent_sha256} and received sha256 {received_sha256} "
        f"(waited {timeout:g}s)",
        f"  the proxy saw {len(requests)} request(s):",
    ]
    lines += [f"    {_describe(r)}" for r in requests] or ["    (none)"]
    raise AssertionError("\n".join(lines))


__all__ = [
    "PROTO_NAMES",
    "Flow",
    "RecordsRequests",
    "assert_checksums_ok",
    "assert_routed_via",
    "assert_socks5_roundtrip",
]
