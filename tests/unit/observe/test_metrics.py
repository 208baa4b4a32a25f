"""The Prometheus exposition, held to the text format 0.0.4 by hand and by
prometheus_client's own parser (a dev-only dependency; ztun's runtime has none)."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ztun.flows import FlowTable
from ztun.metrics import ENGINE_DROPS, STACK_DROPS, drop_reasons, escape, render

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*"'  # escapes: \\ \" \n only
SAMPLE = re.compile(
    rf"(?P<name>{NAME.pattern})(\{{{LABEL}(,{LABEL})*\}})? "
    r"(?P<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN))$"
)
REQUIRED = {
    "ztun_flows_active": "gauge",
    "ztun_flows_total": "counter",
    "ztun_bytes_total": "counter",
    "ztun_packets_dropped_total": "counter",
    "ztun_proxy_up": "gauge",
    "ztun_proxy_flows_active": "gauge",
    "ztun_proxy_failures": "gauge",
    "ztun_proxy_rtt_seconds": "gauge",
    "ztun_group_member_active": "gauge",
    "ztun_connect_seconds": "histogram",
    "ztun_udp_sessions_active": "gauge",
}


class Meter:
    def __init__(self, up: int, down: int) -> None:
        self.bytes_up, self.bytes_down, self.half_closed = up, down, False


def a_status() -> dict:
    table = FlowTable()
    for outbound, up, down, seconds in (("proxy1", 10, 2000, 0.004), ("direct", 5, 7, 0.2)):
        record = table.add("tcp", ("10.0.0.2", 1), ("192.0.2.1", 80), 0.0)
        table.routed(record, outbound)
        table.connected(record, Meter(up, down), seconds)
    ended = table.add("udp", ("10.0.0.2", 5), ("192.0.2.1", 53), 0.0)
    table.routed(ended, "proxy1")
    table.connected(ended, Meter(30, 40))
    table.remove(ended, 1.0, "expired")
    return {
        "instance": {"device": "zt0", "started": 1700000000.5},
        "proxies": [
            {"name": "a", "up": True, "active": 3, "failures": 0, "rtt_ms": 1.5},
            {"name": 'we"ird\\name', "up": False, "active": 0, "failures": 2, "rtt_ms": None},
        ],
        "groups": {"main": {"policy": "failover", "members": ['we"ird\\name', "a"], "active": "a"}},
        "counters": {
            "tun_frames_in": 100,
            "tun_packets_out": 90,
            "tun_write_dropped": 3,
            "udp_sessions_active": 2,
            "tcp_flows": 2,
            "stack": {"malformed_truncated": 4, "ipv4_fragment": 1, "icmp_echo_answered": 9},
            "kernel_nat": {"installed": 3, "entries": 4, "bytes_up": 5000, "packets_down": 6},
        },
        "flows": table.summary(),
    }


def test_drop_reasons_come_from_the_one_table() -> None:
    counters = a_status()["counters"]
    assert drop_reasons(counters) == {
        "ipv4_fragment": 1,
        "malformed_truncated": 4,
        ENGINE_DROPS["tun_write_dropped"]: 3,
    }


def test_every_known_drop_reason_is_exposed_at_0_before_its_first_drop() -> None:
    """A label that appears only at the first drop breaks rate() and alerts on it
    until then; the known reasons (the stack's and the engine's) start at 0."""
    samples = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(render(a_status()))
        if family.name == "ztun_packets_dropped"
        for s in family.samples
    }
    assert set(samples) == STACK_DROPS | set(ENGINE_DROPS.values()) | {"ipv4_fragment"}
    assert samples["tcp_nat_exhausted"] == 0 and samples["udp_queue_overflow"] == 0
    assert samples["malformed_truncated"] == 4 and samples["tun_write_full"] == 3
    assert samples["icmp_send_failed"] == 0  # two engine counters, one reason, one sample


def test_label_values_are_escaped() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_exposition_follows_the_text_format() -> None:
    text = render(a_status())
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert NAME.fullmatch(name) and name not in declared
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in declared
            declared[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, line
            name = match["name"]
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in declared else name
            # Every sample follows its family's TYPE line, as the format requires.
            assert family in declared, line
    assert {k: declared[k] for k in REQUIRED} == REQUIRED


def test_prometheus_client_reads_back_every_value() -> None:
    families = {f.name: f for f in text_string_to_metric_families(render(a_status()))}
    # prometheus_client strips _total from counter family names.
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    assert samples[("ztun_flows_active", (("proto", "tcp"),))] == 2
    assert samples[("ztun_flows_active", (("proto", "udp"),))] == 0
    assert samples[("ztun_flows_total", (("outbound", "proxy1"), ("proto", "udp")))] == 1
    assert samples[("ztun_bytes_total", (("direction", "down"), ("proto", "tcp")))] == 2007
    assert samples[("ztun_bytes_total", (("direction", "up"), ("proto", "udp")))] == 30
    assert samples[("ztun_packets_dropped_total", (("reason", "malformed_truncated"),))] == 4
    assert samples[("ztun_proxy_up", (("proxy", "a"),))] == 1
    assert samples[("ztun_proxy_up", (("proxy", 'we"ird\\name'),))] == 0
    assert samples[("ztun_proxy_flows_active", (("proxy", "a"),))] == 3
    assert samples[("ztun_proxy_failures", (("proxy", "a"),))] == 0
    assert samples[("ztun_proxy_failures", (("proxy", 'we"ird\\name'),))] == 2
    assert samples[("ztun_proxy_rtt_seconds", (("proxy", "a"),))] == pytest.approx(0.0015)
    # No successful check yet: no sample rather than a made-up 0.
    assert ("ztun_proxy_rtt_seconds", (("proxy", 'we"ird\\name'),)) not in samples
    assert samples[("ztun_group_member_active", (("group", "main"), ("proxy", "a")))] == 1
    weird = (("group", "main"), ("proxy", 'we"ird\\name'))
    assert samples[("ztun_group_member_active", weird)] == 0
    assert samples[("ztun_udp_sessions_active", ())] == 2
    assert samples[("ztun_connect_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("ztun_connect_seconds_bucket", (("le", "0.25"),))] == 2
    assert samples[("ztun_connect_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("ztun_connect_seconds_count", ())] == 2
    assert samples[("ztun_connect_seconds_sum", ())] == pytest.approx(0.204)
    assert families["ztun_connect_seconds"].type == "histogram"
    assert samples[("ztun_kernel_nat_entries", ())] == 4
    assert samples[("ztun_kernel_nat_bytes_total", (("direction", "up"),))] == 5000
    assert samples[("ztun_kernel_nat_bytes_total", (("direction", "down"),))] == 0
    assert samples[("ztun_kernel_nat_packets_total", (("direction", "down"),))] == 6


def test_no_kernel_nat_no_kernel_nat_families() -> None:
    status = a_status()
    del status["counters"]["kernel_nat"]
    assert "ztun_kernel_nat" not in render(status)


def test_histogram_buckets_are_cumulative() -> None:
    text = render(a_status())
    buckets = [int(v) for v in re.findall(r"ztun_connect_seconds_bucket\{[^}]*\} (\d+)", text)]
    assert buckets == sorted(buckets) and buckets[-1] == 2
