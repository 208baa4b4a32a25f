"""The load tools' output parsers and the report, on captured output: no root, no namespaces.

In tests/bench (outside the default run) beside the end-to-end quick bench; they take
milliseconds: `pytest tests/bench/test_bench_parse.py`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ztun.bench import figures, parse, procstat, profile, report, systems
from ztun.bench.options import QUICK_TESTS, SYSTEMS, TESTS, BenchOptions, parse_names

AB_TEXT = """\
Concurrency Level:      16
Time taken for tests:   5.493 seconds
Complete requests:      2000
Failed requests:        3
Requests per second:    364.12 [#/sec] (mean)
"""
AB_CSV = "Percentage served,Time in ms\n0,0.443\n50,1.250\n98,13.5\n99,20.9\n100,31.0\n"

WRK_TEXT = """\
Running 2s test @ http://10.211.0.2:8080/1k
  1 threads and 1 connections
  Latency Distribution
     50%   80.00us
     75%    2.30ms
     90%   12.81ms
     99%   62.72ms
  7860 requests in 2.05s, 9.47MB read
Requests/sec:   3837.16
Transfer/sec:      4.63MB
"""


def _iperf_tcp_doc() -> str:
    intervals = [
        {"sum": {"bytes": 100, "omitted": True}},
        {"sum": {"bytes": 900, "omitted": False}},
    ]
    end = {
        "sum_sent": {"bytes": 900, "retransmits": 7},
        "sum_received": {"bytes": 880, "bits_per_second": 4.2e9},
    }
    return json.dumps({"intervals": intervals, "end": end})


def test_iperf_tcp_takes_the_receiver_rate_and_every_byte_moved() -> None:
    result = parse.iperf_tcp(_iperf_tcp_doc())
    assert result.bits_per_second == 4.2e9
    assert result.bytes_total == 1000  # omitted intervals count for CPU per GB
    assert result.retransmits == 7


def test_iperf_error_is_reported_not_parsed() -> None:
    with pytest.raises(ValueError, match="unable to connect"):
        parse.iperf_tcp(json.dumps({"error": "unable to connect to server"}))
    with pytest.raises(ValueError, match="no JSON"):
        parse.iperf_tcp("iperf3: error")


def test_iperf_udp_uses_the_receivers_report() -> None:
    end = {
        "sum_sent": {"bytes": 89838000, "bits_per_second": 358.6e6, "seconds": 2.0},
        "sum_received": {
            "bytes": 59225600,
            "bits_per_second": 235.7e6,
            "seconds": 2.01,
            "lost_percent": 33.6,
            "packets": 63887,
            "lost_packets": 21583,
        },
    }
    result = parse.iperf_udp(json.dumps({"end": end}))
    assert (result.offered_bps, result.delivered_bps, result.loss_percent) == (
        358.6e6,
        235.7e6,
        33.6,
    )
    assert result.bytes_delivered == 59225600


def test_iperf_udp_old_single_sum() -> None:
    end = {
        "sum": {
            "bytes": 1000,
            "bits_per_second": 8000.0,
            "seconds": 1.0,
            "packets": 10,
            "lost_packets": 5,
        }
    }
    result = parse.iperf_udp(json.dumps({"end": end}))
    assert result.loss_percent == 50.0
    assert result.delivered_bps == 4000.0


def test_ab_percentiles_come_from_the_csv() -> None:
    result = parse.ab(AB_TEXT, AB_CSV)
    assert (result.requests_per_second, result.complete, result.failed) == (364.12, 2000, 3)
    assert (result.p50_ms, result.p99_ms) == (1.25, 20.9)


def test_wrk_latency_units() -> None:
    result = parse.wrk(WRK_TEXT)
    assert result.requests_per_second == 3837.16
    assert result.requests == 7860
    assert result.p50_seconds == pytest.approx(80e-6)
    assert result.p99_seconds == pytest.approx(62.72e-3)
    assert result.errors == 0
    assert (
        parse.wrk(WRK_TEXT + "  Socket errors: connect 0, read 2, write 0, timeout 1\n").errors == 3
    )


def test_names_keep_the_canonical_order_and_reject_unknown() -> None:
    assert parse_names("ztun,direct", SYSTEMS, "system") == ("direct", "ztun")
    with pytest.raises(ValueError, match="unknown system nope"):
        parse_names("ztun,nope", SYSTEMS, "system")


def test_quick_profile_is_a_subset() -> None:
    quick = BenchOptions.make(quick=True)
    assert quick.reps == 1 and set(quick.tests) == set(QUICK_TESTS) <= set(TESTS)
    assert quick.time_limit < 120


def test_ratios_are_ztun_over_system_and_table_marks_missing() -> None:
    runs = [
        report.RunRecord(1, "ztun", "tcp-1-up", {"gbps": 4.0}),
        report.RunRecord(2, "ztun", "tcp-1-up", {"gbps": 6.0}),
        report.RunRecord(3, "ztun", "tcp-1-up", {"gbps": 5.0}),
        report.RunRecord(1, "sing-box-system", "tcp-1-up", {"gbps": 2.5}),
        report.RunRecord(1, "socks-only", "udp-1g", not_applicable="proxychains carries TCP only"),
        report.RunRecord(1, "ztun", "udp-1g", error="BenchError: boom"),
    ]
    summary = report.summarise(runs)
    assert summary["ztun"]["tcp-1-up.gbps"] == report.Stat(4.0, 5.0, 6.0, 3)
    assert report.ratios(summary) == {"sing-box-system": {"tcp-1-up.gbps": 2.0}}
    text = report.table(runs, ("socks-only", "ztun", "sing-box-system"), ("tcp-1-up", "udp-1g"))
    assert "5.00 (4.00-6.00)" in text and "2.00x" in text
    udp_row = next(line for line in text.splitlines() if line.startswith("UDP 1G delivered"))
    assert "n/a" in udp_row and "FAIL" in udp_row


def test_machine_cpu_counts_busy_time_only() -> None:
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal guest
    guest_nice (proc(5)); idle and iowait are not busy, guest is inside user already."""
    ticks = procstat.CLOCK_TICKS
    line = f"cpu  {ticks} 2 3 1000 500 4 {ticks} 6 {ticks} 7\n"
    busy = ticks + 2 + 3 + 4 + ticks + 6
    assert procstat.machine_cpu_seconds(line) == pytest.approx(busy / ticks)
    assert procstat.machine_cpu_seconds("cpu  1 2 3 4\n") == pytest.approx(6 / ticks)
    with pytest.raises(ValueError, match="no total cpu line"):
        procstat.machine_cpu_seconds("cpu0 1 2 3 4\n")
    assert procstat.machine_cpu_seconds() > 0  # this machine's, read from /proc/stat


_ROOT = "<module> (ztun/__main__.py:5);main (ztun/cli.py:1)"
COLLAPSED = f"""\
{_ROOT};select (selectors.py:468) 60
{_ROOT};on_readable (ztun/relay.py:9);_drain (ztun/relay.py:20) 30
{_ROOT};on_readable (ztun/relay.py:9) 10
not a stack line
"""


def test_profile_summary_counts_frames_once_per_stack_and_the_poll_as_waiting() -> None:
    summary = profile.summarize(COLLAPSED).splitlines()
    assert summary[0] == "100 samples, 60% waiting in the event loop's poll"
    shares = {line[8:]: float(line[:5]) for line in summary[1:]}
    assert shares == {
        "<module>": 100.0,
        "main": 100.0,
        "select": 60.0,
        "on_readable": 40.0,
        "_drain": 30.0,
    }
    assert profile.summarize("") == "no samples\n"


def test_profiles_are_taken_of_ztun_systems_only() -> None:
    assert profile.profile_path(None, "ztun", "conn", 1) is None
    assert profile.profile_path("p", "sing-box-system", "conn", 1) is None
    assert profile.profile_path("p", "ztun", "rss", 1) is None  # it restarts the process
    assert (
        str(profile.profile_path("p", "ztun-stack", "tcp-1-up", 2))
        == "p/ztun-stack-tcp-1-up-r2.txt"
    )


def test_memory_is_measured_of_tun2socks_processes_only() -> None:
    """socks-relay's hop is billed for CPU, but it holds no tunnel: its memory figure would
    restart it against the holding proxy for nothing."""
    hop = systems.make_system("socks-relay", cast(systems.Env, None))
    hop.proc = cast(Any, SimpleNamespace(pid=4321))  # started: it has a process to bill
    assert hop.pid == 4321
    with pytest.raises(figures.NotApplicable):
        figures.rss(cast(Any, None), hop, 1.0)
    assert systems.make_system("ztun", cast(systems.Env, None)).is_tun2socks
