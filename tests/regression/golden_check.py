"""Running a scenario under capture, and comparing (or recording) its goldens.

A mismatch fails with ``assert actual == golden`` on the canonical texts (the conftest's
``pytest_assertrepr_compare`` renders the unified diff; pytest shortens long ones unless
``-vv``), and the untruncated diff, both canonical texts and both pcaps -- the golden
copied beside the capture -- are attached to the test's report section.
"""

from __future__ import annotations

import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from golden_bench import Bench, broken_launcher
from golden_scenarios import Scenario

from harness.artifacts import TestArtifacts
from harness.pcap import Comparison, Golden

WRAPPER = Path(__file__).with_name("broken_ztun.py")


def run_scenario(bench: Bench, scenario: Scenario) -> dict[str, Path]:
    """Drive the scenario with its captures running; golden name -> captured pcap."""
    with ExitStack() as stack:
        captures = {
            scenario.golden(where): stack.enter_context(
                bench.capture(where, scenario.golden(where))
            )
            for where in scenario.captures
        }
        scenario.drive(bench)
        bench.settle()
    return {name: cap.path for name, cap in captures.items()}


def broken_binary(artifacts: TestArtifacts, mode: str) -> str:
    """A launcher for ztun with one deliberate fault (tests/regression/broken_ztun.py)."""
    return str(broken_launcher(artifacts.dir, mode, sys.executable, WRAPPER))


def attach_mismatch(
    artifacts: TestArtifacts, golden: Golden, result: Comparison, bench: Bench | None = None
) -> None:
    """Both pcaps, both canonical texts and the diff, in the test's artifact folder."""
    kept = artifacts.path(f"golden-{golden.name}.pcap")
    shutil.copyfile(golden.pcap, kept)
    artifacts.attach(f"golden pcap {golden.name}", path=kept)
    if result.actual.pcap is not None:
        artifacts.attach(f"actual pcap {golden.name}", path=result.actual.pcap)
    artifacts.attach_file(f"{golden.name}.golden.txt", result.expected.text)
    artifacts.attach_file(f"{golden.name}.actual.txt", result.actual.text)
    diff = artifacts.path(f"{golden.name}.diff")
    diff.write_text(result.report())
    notes = "".join(f"app: {n}\n" for n in (bench.notes if bench else []))
    artifacts.attach(f"golden {golden.name}: mismatch", path=diff, text=notes + result.report())


def check_against_goldens(
    captured: dict[str, Path],
    golden_dir: Path,
    artifacts: TestArtifacts,
    *,
    update: bool,
    bench: Bench | None = None,
) -> list[Comparison]:
    """Record (``--update-golden``) or compare every capture, then assert each matches."""
    __tracebackhide__ = True  # the failure is the diff, not this helper's source
    goldens = [Golden(golden_dir, name) for name in captured]
    if update:
        for golden in goldens:
            golden.record(captured[golden.name])
        return []
    results = [golden.compare(captured[golden.name]) for golden in goldens]
    for golden, result in zip(goldens, results, strict=True):
        if not result.equal:
            attach_mismatch(artifacts, golden, result, bench)
    for result in results:
        unmet = "\n".join(f"unmet expectation: {f}" for f in result.failures)
        golden_text, actual_text = result.expected, result.actual
        # The golden on the left: the diff reads --- golden, +++ actual.
        assert golden_text == actual_text, unmet or "golden mismatch"
        assert not result.failures, unmet
    return results
