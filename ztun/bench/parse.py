"""Parsers for what the load tools print: iperf3 -J, ab's percentile CSV and text, wrk's text.

Pure functions over strings, so they are tested on captured output without namespaces.
Each raises ValueError saying what it did not find (a tool that failed prints no numbers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True, slots=True)
class IperfTcp:
    bits_per_second: float  # at the receiver, omitted intervals excluded
    bytes_total: int  # moved in the whole run including omitted intervals (for CPU per GB)
    retransmits: int


@dataclass(frozen=True, slots=True)
class IperfUdp:
    offered_bps: float
    delivered_bps: float
    loss_percent: float
    bytes_delivered: int
    seconds: float


@dataclass(frozen=True, slots=True)
class AbResult:
    requests_per_second: float
    complete: int
    failed: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    requests: int
    p50_seconds: float
    p99_seconds: float
    errors: int


def _iperf_doc(text: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"iperf3 printed no JSON ({exc}): {text[:200]!r}") from None
    if doc.get("error"):
        raise ValueError(f"iperf3: {doc['error']}")
    return doc


def iperf_tcp(text: str) -> IperfTcp:
    doc = _iperf_doc(text)
    end = doc.get("end", {})
    try:
        received = end["sum_received"]
        sent = end.get("sum_sent", {})
    except KeyError:
        raise ValueError("iperf3 JSON has no end.sum_received (the test did not finish)") from None
    moved = sum(int(iv["sum"]["bytes"]) for iv in doc.get("intervals", ()))
    return IperfTcp(
        float(received["bits_per_second"]),
        max(moved, int(received["bytes"])),
        int(sent.get("retransmits", 0)),
    )


def iperf_udp(text: str) -> IperfUdp:
    """Offered is what the sender managed (it may fall short of `-b` on a busy machine);
    delivered and loss are the receiver's report (iperf3 >= 3.12 sends it back to the client)."""
    doc = _iperf_doc(text)
    end = doc.get("end", {})
    received, sent = end.get("sum_received"), end.get("sum_sent")
    if received and sent:
        seconds = float(received["seconds"])
        if seconds <= 0 or not received.get("packets"):
            raise ValueError("iperf3 UDP: the receiver counted no packets")
        return IperfUdp(
            offered_bps=float(sent["bits_per_second"]),
            delivered_bps=float(received["bits_per_second"]),
            loss_percent=float(received["lost_percent"]),
            bytes_delivered=int(received["bytes"]),
            seconds=seconds,
        )
    # Older iperf3: one "sum" with the sender's bytes and the receiver's loss counts.
    total = end.get("sum")
    if not total:
        raise ValueError("iperf3 UDP JSON has no end.sum (the test did not finish)")
    packets, lost = int(total.get("packets", 0)), int(total.get("lost_packets", 0))
    seconds = float(total.get("seconds") or 0.0)
    if packets <= 0 or seconds <= 0:
        raise ValueError("iperf3 UDP: the receiver counted no packets")
    delivered = int(total["bytes"]) * (packets - lost) / packets
    return IperfUdp(
        offered_bps=float(total["bits_per_second"]),
        delivered_bps=delivered * 8 / seconds,
        loss_percent=100.0 * lost / packets,
        bytes_delivered=int(delivered),
        seconds=seconds,
    )


def _number(pattern: str, text: str, what: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        raise ValueError(f"no {what} in the output: {text[-300:]!r}")
    return float(match.group(1))


def ab(text: str, csv: str) -> AbResult:
    """ab's summary, with p50/p99 from its `-e` CSV (fractional ms, where the text has whole ms)."""
    percentiles: dict[int, float] = {}
    for line in csv.splitlines()[1:]:
        parts = line.split(",")
        if len(parts) == 2:
            percentiles[int(float(parts[0]))] = float(parts[1])
    if 50 not in percentiles or 99 not in percentiles:
        raise ValueError("ab's percentile CSV has no 50%/99% rows")
    return AbResult(
        requests_per_second=_number(
            r"^Requests per second:\s+([\d.]+)", text, "requests per second"
        ),
        complete=int(_number(r"^Complete requests:\s+(\d+)", text, "complete requests")),
        failed=int(_number(r"^Failed requests:\s+(\d+)", text, "failed requests")),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
    )


def _duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def wrk(text: str) -> WrkResult:
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", text, re.MULTILINE))
    if "50" not in latency or "99" not in latency:
        raise ValueError(f"wrk printed no latency distribution (--latency): {text[-300:]!r}")
    errors = 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        errors = sum(int(g) for g in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        errors += int(match.group(1))
    return WrkResult(
        requests_per_second=_number(r"^Requests/sec:\s+([\d.]+)", text, "Requests/sec"),
        requests=int(_number(r"^\s+(\d+) requests in", text, "request count")),
        p50_seconds=_duration(latency["50"]),
        p99_seconds=_duration(latency["99"]),
        errors=errors,
    )
