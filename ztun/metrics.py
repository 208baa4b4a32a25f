"""Prometheus text exposition (format 0.0.4) of a status reply, written by hand.

The runtime carries no client library: the format is a few lines per family (`# HELP`,
`# TYPE`, then `name{label="value"} number`), and what ztun exposes is read, when a
scrape comes, from the same status reply `ztun status` shows (summed over workers by
the parent), so nothing on the packet path knows metrics exist.

Which counters are drops, and the `reason` label each gets, is the table below: every
counter of the stack is a drop (one reason each: `malformed_*`, `fragment_*`, ...)
except the few in STACK_NOT_DROPS; of the engine's counters only those in ENGINE_DROPS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Stack counters that count something other than a dropped packet.
STACK_NOT_DROPS = frozenset(
    {
        "icmp_echo_answered",  # answered, not dropped
        "tcp_accept_unknown",  # an accept(), not a packet
        "tcp_reset_unknown_flow",  # answered with a RST (RFC 9293 3.10.7.1)
        "icmp_echo_rejected",  # answered: unreachable, administratively prohibited
        "fragment_reassembled",  # whole datagrams handed on
        "fragmented_to_tun",  # packets ztun wrote in fragments
    }
)
#: Every stack counter that is a drop, i.e. its `reason` label (docs/metrics.md's table;
#: tests/unit/observe/test_drop_reasons_doc.py reads the stack's source to keep both true).
STACK_DROPS = frozenset(
    {
        # a packet parser refused it (ztun.wire: Truncated / Malformed reason)
        "malformed_truncated",
        "malformed_bad_version",
        "malformed_bad_ihl",
        "malformed_bad_length",
        "malformed_bad_checksum",
        "malformed_bad_option",
        "malformed_bad_data_offset",
        "malformed_bad_ext_header",
        # the stack's own refusals
        "ipv4_bad_checksum",
        "tcp_bad_checksum",
        "udp_bad_checksum",
        "icmp_bad_checksum",
        "multicast",
        "unsupported_protocol",
        "tcp_family_disabled",
        "tcp_unknown_nat_port",
        "tcp_no_session",
        "tcp_nat_exhausted",
        "icmp_not_echo",
        "icmpv6_not_echo",
        # reassembly (ztun.stack.reassembly)
        "fragment_tiny",
        "fragment_bad_length",
        "fragment_too_big",
        "fragment_duplicate",
        "fragment_overlap",
        "fragment_inconsistent",
        "fragment_of_discarded",
        "fragment_source_limit",
        "fragment_evicted",
        "fragment_timeout",
    }
)
#: Engine counters that count dropped packets or datagrams -> their reason label.
ENGINE_DROPS: Mapping[str, str] = {
    "tun_short_frame": "tun_short_frame",
    "tun_write_dropped": "tun_write_full",
    "tun_write_error": "tun_write_error",
    "udp_up_dropped": "udp_send_failed",
    "udp_queue_overflow": "udp_queue_overflow",
    "udp_queue_dropped": "udp_queue_dropped",  # waited for an association that closed
    "icmp_echo_send_dropped": "icmp_send_failed",
    "icmp_echo_send_failed": "icmp_send_failed",
    "udp_stale_session": "udp_stale_session",
    "udp_delivery_error": "udp_delivery_error",
    "udp_reply_from_domain": "udp_reply_from_domain",
    "udp_reply_family_mismatch": "udp_reply_family_mismatch",
    "dns_dropped": "dns_dropped",
    "dns_upstream_malformed": "dns_upstream_malformed",
    "dns_tcp_malformed": "dns_tcp_malformed",
    "udp_loop_refused": "udp_loop_refused",
}

#: Every known reason: exposed at 0 before its first drop, so rate() and alerts on a
#: reason work from the start (Prometheus practice: do not let a label appear late).
KNOWN_DROP_REASONS = STACK_DROPS | frozenset(ENGINE_DROPS.values())


def drop_reasons(counters: Mapping[str, Any]) -> dict[str, int]:
    """reason -> dropped packets, from a status reply's `counters`."""
    reasons: dict[str, int] = {}
    for name, value in (counters.get("stack") or {}).items():
        if name not in STACK_NOT_DROPS:
            reasons[name] = reasons.get(name, 0) + int(value)
    for name, reason in ENGINE_DROPS.items():
        if counters.get(name):
            reasons[reason] = reasons.get(reason, 0) + int(counters[name])
    return dict(sorted(reasons.items()))


def escape(value: str) -> str:
    """A label value: backslash, double quote and line feed escaped (format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _head(self, name: str, kind: str, help_text: str) -> None:
        # HELP text escapes backslash and line feed only (format 0.0.4).
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {escaped}")
        self.lines.append(f"# TYPE {name} {kind}")

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self._head(name, kind, help_text)
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {number(value)}")

    def histogram(self, name: str, help_text: str, data: Mapping[str, Any]) -> None:
        self._head(name, "histogram", help_text)
        cumulative = 0
        counts = list(data["counts"])
        for bound, count in zip(data["bounds"], counts, strict=False):
            cumulative += count
            self.lines.append(f'{name}_bucket{{le="{number(float(bound))}"}} {cumulative}')
        cumulative += counts[-1]
        self.lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
        self.lines.append(f"{name}_sum {number(float(data['sum']))}")
        self.lines.append(f"{name}_count {int(data['count'])}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _proxy_health(
    out: _Writer, proxies: Iterable[Mapping[str, Any]], groups: Mapping[str, Mapping[str, Any]]
) -> None:
    """Each proxy's health (docs/contracts.md section 2) and which member each group's
    new flows go to: what an operator alerts on when a proxy fails over."""
    proxies = list(proxies)
    out.family(
        "ztun_proxy_up",
        "gauge",
        "1 while the proxy is up (its health checks pass), else 0.",
        (({"proxy": p["name"]}, bool(p["up"])) for p in proxies),
    )
    out.family(
        "ztun_proxy_flows_active",
        "gauge",
        "Open flows carried by the proxy.",
        (({"proxy": p["name"]}, p.get("active", 0)) for p in proxies),
    )
    out.family(
        "ztun_proxy_failures",
        "gauge",
        "Consecutive failed checks or connects of the proxy (0 after a success).",
        (({"proxy": p["name"]}, p.get("failures", 0)) for p in proxies),
    )
    out.family(
        "ztun_proxy_rtt_seconds",
        "gauge",
        "Round trip of the proxy's last successful check (absent before the first).",
        (
            ({"proxy": p["name"]}, p["rtt_ms"] / 1000.0)
            for p in proxies
            if p.get("rtt_ms") is not None
        ),
    )
    out.family(
        "ztun_group_member_active",
        "gauge",
        "1 for the member a group's new flows go to now, 0 for its other members.",
        (
            ({"group": name, "proxy": member}, member == group.get("active"))
            for name, group in sorted(groups.items())
            for member in group.get("members", ())
        ),
    )


def render(status: Mapping[str, Any]) -> str:
    """The exposition of one status reply (see ztun.control: the `status` command)."""
    flows = status["flows"]
    counters = status["counters"]
    out = _Writer()
    out.family(
        "ztun_flows_active",
        "gauge",
        "Open flows.",
        (({"proto": proto}, n) for proto, n in sorted(flows["active"].items())),
    )
    out.family(
        "ztun_flows_total",
        "counter",
        "Flows opened, by protocol and the outbound the rules chose.",
        (({"proto": r["proto"], "outbound": r["outbound"]}, r["count"]) for r in flows["opened"]),
    )
    out.family(
        "ztun_bytes_total",
        "counter",
        "Payload bytes carried (up: from the apps, down: to them), open flows included.",
        (({"proto": r["proto"], "direction": r["direction"]}, r["bytes"]) for r in flows["bytes"]),
    )
    out.family(
        "ztun_packets_dropped_total",
        "counter",
        "Packets dropped, by reason.",
        (
            ({"reason": reason}, n)
            for reason, n in sorted(
                (dict.fromkeys(KNOWN_DROP_REASONS, 0) | drop_reasons(counters)).items()
            )
        ),
    )
    _proxy_health(out, status.get("proxies") or (), status.get("groups") or {})
    out.histogram(
        "ztun_connect_seconds",
        "Seconds from an app's SYN to the outbound's reply to CONNECT.",
        flows["connect_seconds"],
    )
    out.family(
        "ztun_udp_sessions_active",
        "gauge",
        "UDP sessions (one per app source address and port) not yet expired.",
        [({}, counters.get("udp_sessions_active", 0))],
    )
    kernel = counters.get("kernel_nat")
    if kernel is not None:  # only when the kernel NAT runs (Linux, not --no-kernel-nat)
        out.family(
            "ztun_kernel_nat_entries",
            "gauge",
            "Flow map entries of the kernel NAT (two per TCP flow it carries).",
            [({}, kernel.get("entries", 0))],
        )
        for what, key, meaning in (
            ("packets", "packets", "Segments (GSO super-packets count once)"),
            ("bytes", "bytes", "TCP payload bytes"),
        ):
            out.family(
                f"ztun_kernel_nat_{what}_total",
                "counter",
                f"{meaning} the kernel NAT rewrote (up: from the apps, down: to them).",
                [({"direction": d}, kernel.get(f"{key}_{d}", 0)) for d in ("up", "down")],
            )
    instance = status.get("instance") or {}
    out.family(
        "ztun_tun_packets_total",
        "counter",
        "Frames read from (in) and written to (out) the TUN device.",
        [
            ({"direction": "in"}, counters.get("tun_frames_in", 0)),
            ({"direction": "out"}, counters.get("tun_packets_out", 0)),
        ],
    )
    out.family(
        "ztun_start_time_seconds",
        "gauge",
        "Unix time the instance started.",
        [({}, float(instance.get("started", 0.0)))],
    )
    return out.text()
