"""Turn the bench's runs into min/median/max per system, ratios to ztun, a table, JSON and a PNG.

Ratios are ztun's median over the other system's median, for every metric, the form the
targets are written in ("TCP one stream >= 1.1x sing-box system", "RSS <= 0.8x"): above
1 is better for ztun where higher is better, below 1 where lower is better.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE = "ztun"
SCHEMA = "ztun-bench/1"


@dataclass(frozen=True, slots=True)
class Metric:
    test: str
    key: str
    label: str
    unit: str
    higher_is_better: bool

    @property
    def id(self) -> str:
        return f"{self.test}.{self.key}"


def _tcp(test: str, label: str) -> list[Metric]:
    return [
        Metric(test, "gbps", f"TCP {label}", "Gbit/s", True),
        Metric(test, "cpu_s_per_gb", f"TCP {label} CPU", "s/GB", False),
        Metric(test, "machine_cpu_s_per_gb", f"TCP {label} machine CPU", "s/GB", False),
    ]


def _udp(test: str, label: str) -> list[Metric]:
    return [
        Metric(test, "delivered_mbps", f"UDP {label} delivered", "Mbit/s", True),
        Metric(test, "sent_mbps", f"UDP {label} sent by iperf3", "Mbit/s", True),
        Metric(test, "loss_pct", f"UDP {label} loss", "%", False),
        Metric(test, "cpu_s_per_gb", f"UDP {label} CPU", "s/GB", False),
        Metric(test, "machine_cpu_s_per_gb", f"UDP {label} machine CPU", "s/GB", False),
    ]


def _burst(test: str, server: str) -> list[Metric]:
    return [
        Metric(test, "delivered_pct", f"UDP burst via {server}: delivered", "%", True),
        Metric(test, "seconds", f"UDP burst via {server}: until the last echo", "s", False),
        Metric(test, "fds_per_flow", f"UDP burst via {server}: fds per flow", "fds", False),
    ]


METRICS: tuple[Metric, ...] = (
    *_tcp("tcp-1-up", "1 stream up"),
    *_tcp("tcp-1-down", "1 stream down"),
    *_tcp("tcp-4-up", "4 streams up"),
    *_tcp("tcp-4-down", "4 streams down"),
    Metric("conn", "conn_per_s", "new connections", "conn/s", True),
    Metric("conn", "p50_ms", "new connection p50", "ms", False),
    Metric("conn", "p99_ms", "new connection p99", "ms", False),
    Metric("conn", "failed", "new connections failed", "count", False),
    Metric("conn", "cpu_ms_per_conn", "CPU per new connection", "ms", False),
    Metric("conn", "machine_cpu_ms_per_conn", "machine CPU per new connection", "ms", False),
    Metric("rr", "rr_per_s", "request/response", "RR/s", True),
    Metric("rr", "p50_us", "request/response p50", "us", False),
    Metric("rr", "p99_us", "request/response p99", "us", False),
    *_udp("udp-200m", "200M"),
    *_udp("udp-1g", "1G"),
    *_burst("udp-burst", "sing-box socks"),
    *_burst("udp-burst-danted", "danted"),
    Metric("rss", "idle_mib", "RSS idle", "MiB", False),
    Metric("rss", "held_1000_mib", "RSS 1,000 idle conns", "MiB", False),
    Metric("rss", "held_max_conns", "idle conns held (<=10,000)", "conns", True),
    Metric("rss", "held_max_mib", "RSS at that many", "MiB", False),
    Metric("rss", "kib_per_conn", "memory per idle conn", "KiB", False),
)


@dataclass
class RunRecord:
    rep: int
    system: str
    test: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    not_applicable: str | None = None
    skipped: str | None = None
    seconds: float = 0.0
    load1: float = 0.0  # 1-minute load average when the figure started: noise shows up here


@dataclass(frozen=True, slots=True)
class Stat:
    min: float
    median: float
    max: float
    n: int


def summarise(runs: Sequence[RunRecord]) -> dict[str, dict[str, Stat]]:
    """{system: {metric id: Stat}} over the runs that produced the metric."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            values.setdefault(r.system, {}).setdefault(f"{r.test}.{key}", []).append(value)
    return {
        system: {mid: Stat(min(v), statistics.median(v), max(v), len(v)) for mid, v in by.items()}
        for system, by in values.items()
    }


def ratios(summary: dict[str, dict[str, Stat]]) -> dict[str, dict[str, float]]:
    ref = summary.get(REFERENCE, {})
    out: dict[str, dict[str, float]] = {}
    for system, by in summary.items():
        if system == REFERENCE:
            continue
        for mid, stat in by.items():
            if mid in ref and stat.median > 0:
                out.setdefault(system, {})[mid] = ref[mid].median / stat.median
    return out


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.2f}"
    return f"{value:.1e}"


def _cell(stat: Stat | None, why_missing: str) -> str:
    if stat is None:
        return why_missing
    if stat.n == 1:
        return _fmt(stat.median)
    return f"{_fmt(stat.median)} ({_fmt(stat.min)}-{_fmt(stat.max)})"


def _missing(runs: Sequence[RunRecord], system: str, test: str) -> str:
    mine = [r for r in runs if r.system == system and r.test == test]
    if not mine:
        return "-"
    if any(r.not_applicable for r in mine):
        return "n/a"
    if any(r.error for r in mine):
        return "FAIL"
    return "skip" if any(r.skipped for r in mine) else "-"


def table(runs: Sequence[RunRecord], systems: Sequence[str], tests: Sequence[str]) -> str:
    """Medians (min-max) per system, then ztun/x ratios; metrics no run produced are left out."""
    summary = summarise(runs)
    rat = ratios(summary)
    primary: dict[str, str] = {}
    for m in METRICS:
        primary.setdefault(m.test, m.id)  # always shown, so a failed or n/a test is visible
    metrics = [
        m
        for m in METRICS
        if m.test in tests
        and (m.id == primary[m.test] or any(m.id in summary.get(s, {}) for s in systems))
    ]
    label_w = max([len(f"{m.label} [{m.unit}]") for m in metrics] + [6]) + 1
    rows = [
        [f"{m.label} [{m.unit}]" + (" ^" if m.higher_is_better else " v")]
        + [_cell(summary.get(s, {}).get(m.id), _missing(runs, s, m.test)) for s in systems]
        for m in metrics
    ]
    widths = [max(label_w + 2, *(len(r[0]) for r in rows))] + [
        max(len(s), *(len(r[i + 1]) for r in rows)) for i, s in enumerate(systems)
    ]
    lines = ["median (min-max) over repetitions; ^ higher is better, v lower is better", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(["metric", *systems], widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    others = [s for s in systems if s != REFERENCE and s in rat]
    if REFERENCE in summary and others:
        lines += ["", f"ratios {REFERENCE}/system (medians)", ""]
        rwidths = [widths[0]] + [max(len(s), 6) for s in others]
        lines.append(
            "  ".join(h.ljust(w) for h, w in zip(["metric", *others], rwidths, strict=True))
        )
        for m, row in zip(metrics, rows, strict=True):
            cells = [f"{rat[s][m.id]:.2f}x" if m.id in rat.get(s, {}) else "-" for s in others]
            lines.append(
                "  ".join(
                    c.ljust(w) for c, w in zip([row[0], *cells], rwidths, strict=True)
                ).rstrip()
            )
    return "\n".join(lines)


def document(
    runs: Sequence[RunRecord],
    *,
    options: dict[str, Any],
    environment: dict[str, Any],
    started_at: str,
    elapsed: float,
    complete: bool,
) -> dict[str, Any]:
    summary = summarise(runs)
    return {
        "schema": SCHEMA,
        "started_at": started_at,
        "elapsed_s": round(elapsed, 1),
        "complete": complete,
        "options": options,
        "environment": environment,
        "reference": REFERENCE,
        "metrics": [{**asdict(m), "id": m.id} for m in METRICS],
        "runs": [asdict(r) for r in runs],
        "summary": {s: {mid: asdict(st) for mid, st in by.items()} for s, by in summary.items()},
        "ratios": ratios(summary),
    }


def write_json(doc: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")


def write_png(doc: dict[str, Any], path: str) -> str | None:
    """A grouped bar chart per metric of ztun's advantage over each system; returns why not.

    Unlike the table (ztun/system, the targets' form), each bar is oriented so that above
    1 means ztun is better: ztun/system where higher is better, system/ztun where lower is
    better. Bars start at 1 on a log2 scale, so 2x better and 2x worse look alike.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'ztun[bench]')"
    rat: dict[str, dict[str, float]] = doc["ratios"]
    systems = [s for s in doc["options"]["systems"] if s in rat]
    metrics = [m for m in METRICS if any(m.id in rat[s] for s in systems)]
    if not metrics:
        return "no ratios to plot (ztun produced no figure, or ran alone)"
    # Horizontal bars, one row per metric: it stays readable however many metrics run.
    fig, ax = plt.subplots(figsize=(10.0, max(4.0, 0.12 * len(metrics) * len(systems) + 1.5)))
    height = 0.8 / len(systems)
    for i, system in enumerate(systems):
        ys = [j + (i - (len(systems) - 1) / 2) * height for j in range(len(metrics))]
        xs = []
        for m in metrics:
            r = rat[system].get(m.id)
            xs.append(float("nan") if not r else r if m.higher_is_better else 1 / r)
        ax.barh(ys, [x - 1 for x in xs], height, left=1.0, label=system)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yticks(range(len(metrics)))
    ax.set_yticklabels([f"{m.label} [{m.unit}]" for m in metrics], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ztun advantage (log2): right of 1 = ztun better")
    ax.set_title(
        f"ztun vs each system, medians of {doc['options']['reps']} rep(s), {doc['started_at']}",
        fontsize=9,
    )
    ax.legend(fontsize=8, title="ztun vs", title_fontsize=8)
    ax.grid(axis="x", which="major", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
