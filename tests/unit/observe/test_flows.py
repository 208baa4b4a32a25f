"""FlowTable: records read their bytes live from what moves them; counts add up once
per flow; the histogram follows Prometheus `le` buckets; workers' summaries merge."""

from __future__ import annotations

import pytest

from ztun.flows import (
    CONNECT_BUCKETS,
    FlowFilter,
    FlowState,
    FlowTable,
    Histogram,
    endpoint,
    merge_summaries,
)


class Moving:
    """What a Relay exposes (bytes_up, bytes_down, half_closed), changed by the test."""

    def __init__(self) -> None:
        self.bytes_up = 0
        self.bytes_down = 0
        self.half_closed = False


def test_endpoint_brackets_ipv6_only() -> None:
    assert endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"


def test_bytes_are_read_live_and_frozen_when_the_flow_ends() -> None:
    closed = []
    table = FlowTable(on_closed=closed.append)
    record = table.add("tcp", ("10.0.0.2", 4000), ("192.0.2.1", 80), now=100.0)
    assert record.state is FlowState.CONNECTING and record.outbound is None
    table.routed(record, "proxy1", domain="example.com")
    meter = Moving()
    table.connected(record, meter, connect_seconds=0.003)
    meter.bytes_up, meter.bytes_down = 10, 1000
    assert (record.bytes_up, record.bytes_down) == (10, 1000)
    assert record.as_dict(now=101.5) == {
        "id": 1,
        "proto": "tcp",
        "src": "10.0.0.2:4000",
        "dst": "192.0.2.1:80",
        "domain": "example.com",
        "outbound": "proxy1",
        "bytes_up": 10,
        "bytes_down": 1000,
        "age_s": 1.5,
        "state": "open",
    }
    meter.half_closed = True
    assert record.state is FlowState.HALF_CLOSED
    meter.bytes_down = 5000
    table.remove(record, now=103.0, reason="eof")
    meter.bytes_down = 9999  # the relay is gone: nothing it does now counts
    assert closed == [record]
    assert (record.bytes_down, record.reason, record.ended) == (5000, "eof", 103.0)
    assert len(table) == 0 and table.get(1) is None
    assert table.live_bytes()[("tcp", "down")] == 5000
    table.remove(record, now=104.0, reason="again")  # a second end changes nothing
    assert closed == [record]


def test_ids_count_up_and_are_never_reused() -> None:
    table = FlowTable()
    first = table.add("udp", ("a", 1), ("b", 2), 0.0)
    table.remove(first, 1.0, "expired")
    second = table.add("udp", ("a", 1), ("b", 2), 2.0)
    assert (first.id, second.id) == (1, 2)


def test_close_calls_the_closer_once_known_and_says_when_it_cannot() -> None:
    table = FlowTable()
    calls = []
    record = table.add("tcp", ("a", 1), ("b", 2), 0.0, closer=lambda: calls.append("reset"))
    unclosable = table.add("icmp", ("a", 0), ("b", 0), 0.0)
    assert table.close(record.id) and calls == ["reset"]
    assert record.state is FlowState.CLOSING
    assert not table.close(unclosable.id)
    assert not table.close(999)


def test_opened_counts_per_outbound_and_active_per_proto() -> None:
    table = FlowTable()
    for outbound in ("proxy1", "proxy1", "direct", "reject"):
        table.routed(table.add("tcp", ("a", 1), ("b", 2), 0.0), outbound)
    table.routed(table.add("udp", ("a", 1), ("b", 2), 0.0), "proxy1")
    assert table.opened == {
        ("tcp", "proxy1"): 2,
        ("tcp", "direct"): 1,
        ("tcp", "reject"): 1,
        ("udp", "proxy1"): 1,
    }
    assert table.active() == {"tcp": 4, "udp": 1, "icmp": 0}


def test_histogram_buckets_are_upper_inclusive() -> None:
    h = Histogram()
    for value in (0.001, 0.0011, 10.0, 11.0):
        h.observe(value)
    assert h.counts[0] == 1  # le="0.001" holds 0.001 itself
    assert h.counts[1] == 1
    assert h.counts[len(CONNECT_BUCKETS) - 1] == 1  # le="10"
    assert h.counts[-1] == 1  # +Inf
    assert h.count == 4 and h.total == pytest.approx(21.0021)


def test_filter_by_proto_network_and_domain_suffix() -> None:
    table = FlowTable()
    a = table.add("tcp", ("10.0.0.2", 1), ("192.0.2.7", 443), 0.0, domain="www.example.com")
    b = table.add("udp", ("10.0.0.2", 2), ("2001:db8::5", 53), 0.0)
    c = table.add("tcp", ("10.0.0.2", 3), ("198.51.100.1", 80), 0.0, domain="notexample.com")
    f = FlowFilter.from_request
    assert table.select(f({"proto": "udp"})) == [b]
    assert table.select(f({"dst": "192.0.2.0/24"})) == [a]
    assert table.select(f({"dst": "2001:db8::/32"})) == [b]
    assert table.select(f({"domain": "example.com."})) == [a]  # not notexample.com
    assert table.select(f({})) == [a, b, c]
    with pytest.raises(ValueError, match="proto"):
        f({"proto": "sctp"})
    with pytest.raises(ValueError, match="CIDR"):
        f({"dst": "nonsense"})


def test_top_is_the_busiest_first() -> None:
    table = FlowTable()
    meters = []
    for n in (5, 50, 1):
        record = table.add("tcp", ("a", 1), ("b", 2), 0.0)
        meter = Moving()
        meter.bytes_down = n
        table.connected(record, meter)
        meters.append(record)
    assert [r.bytes_down for r in table.top(2)] == [50, 5]


def test_summaries_of_workers_add_up() -> None:
    tables = [FlowTable(), FlowTable()]
    for k, table in enumerate(tables):
        record = table.add("tcp", ("a", 1), ("b", 2), 0.0)
        table.routed(record, "proxy1")
        meter = Moving()
        meter.bytes_up = 100 * (k + 1)
        table.connected(record, meter, connect_seconds=0.02 * (k + 1))
    merged = merge_summaries(t.summary() for t in tables)
    assert merged["active"] == {"tcp": 2, "udp": 0, "icmp": 0}
    assert merged["opened"] == [{"proto": "tcp", "outbound": "proxy1", "count": 2}]
    assert {"proto": "tcp", "direction": "up", "bytes": 300} in merged["bytes"]
    hist = merged["connect_seconds"]
    assert hist["count"] == 2 and hist["sum"] == pytest.approx(0.06)
    assert sum(hist["counts"]) == 2
