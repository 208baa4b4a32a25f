"""Golden traces: each scenario's captures must match ``pcaps/<scenario>-<where>``.

    pytest tests/regression                      # compare
    pytest tests/regression --update-golden      # re-record (then review the .txt diffs)
    python -m harness pcap diff pcaps/tcp4-tun.pcap artifacts/.../tcp4-tun.pcap

Stability: every scenario must give the same canonical text run after run (5 in a row)
and under ``-n 2``; the negative tests prove the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_bench import BenchFactory
from golden_check import broken_binary, check_against_goldens, run_scenario
from golden_scenarios import BY_NAME, SCENARIOS, Scenario

from harness.artifacts import TestArtifacts
from harness.pcap import Golden, unified_diff

GOLDEN_NAMES = sorted({s.golden(w) for s in SCENARIOS for w in s.captures})


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
@pytest.mark.usefixtures("require_root")
@pytest.mark.netns
@pytest.mark.linux
@pytest.mark.pcap
def test_trace_matches_golden(
    scenario: Scenario,
    bench_factory: BenchFactory,
    golden_dir: Path,
    artifacts: TestArtifacts,
    update_golden: bool,
) -> None:
    bench = bench_factory(scenario)
    captured = run_scenario(bench, scenario)
    check_against_goldens(captured, golden_dir, artifacts, update=update_golden, bench=bench)


# --------------------------------------------------------------------------- negative


@pytest.mark.parametrize(
    ("mode", "expected_in_diff"),
    [
        ("corrupt-checksum", "+bad checksums: "),
        ("drop-fin", "+  < control SA@0"),
    ],
)
@pytest.mark.netns
@pytest.mark.linux
@pytest.mark.pcap
def test_broken_ztun_is_caught(
    mode: str,
    expected_in_diff: str,
    bench_factory: BenchFactory,
    golden_dir: Path,
    artifacts: TestArtifacts,
    update_golden: bool,
) -> None:
    """ztun with one deliberate fault must fail the tcp4 goldens with a readable diff."""
    if update_golden:
        pytest.skip("--update-golden records goldens; nothing to prove against them")
    scenario = BY_NAME["tcp4"]
    bench = bench_factory(scenario, binary=broken_binary(artifacts, mode))
    captured = run_scenario(bench, scenario)
    golden = Golden(golden_dir, scenario.golden("tun"))
    result = golden.compare(captured[golden.name])
    assert not result.equal, f"the golden did not notice ztun with {mode}: worthless"
    diff = "\n".join(unified_diff(result.expected, result.actual))
    artifacts.attach(f"the diff that caught {mode}", text=diff)
    assert expected_in_diff in diff, diff
    # The rendering a reviewer gets is the assertion report; show it with -s/-rA.
    print(f"\n--- {mode}: diff against golden {golden.name} ---\n{diff}")


# --------------------------------------------------------------------------- goldens on disk


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_text_is_the_rendering_of_its_pcap(name: str, golden_dir: Path) -> None:
    """The committed .txt is what a reviewer reads: it must be the golden pcap's rendering
    (re-render with ``python -m harness pcap render pcaps/NAME.pcap --write``)."""
    golden = Golden(golden_dir, name)
    if not golden.exists():
        pytest.fail(f"{golden.pcap} missing: record it with pytest --update-golden")
    committed = golden.text_path.read_text() if golden.text_path.exists() else ""
    rendered = golden.render()
    from harness.pcap import CanonicalText

    assert CanonicalText(f"committed {name}.txt", committed, "document") == CanonicalText(
        f"rendered {name}.pcap", rendered, "document"
    )


def test_goldens_fit_the_budget(golden_dir: Path) -> None:
    """pcaps/ stays small (snaplen and packet counts kept low): under 2 MiB in all."""
    total = sum(p.stat().st_size for p in golden_dir.glob("*") if p.is_file())
    assert total < 2 * 1024 * 1024, f"pcaps/ holds {total} bytes"
