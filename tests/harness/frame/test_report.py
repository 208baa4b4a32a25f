"""The conformance report (harness.conformance, harness.report, ``ztun-harness report``)
on a fake suite: no root needed.

Inner pytest sessions (pytester, in a subprocess) run tests marked ``conformance`` that
pass, fail, skip and error, and optional ones; the report must say which, why, where the
evidence is and what each behaviour checks -- also under xdist, where only the controller
may write it -- and the run's exit status must ignore optional behaviours and skips.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import report
from harness.certify import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_status

FAKE_SUITE = '''
import pytest

pytestmark = pytest.mark.conformance

@pytest.fixture
def broken_setup():
    raise RuntimeError("no TUN for you")

def test_tcp_open(record_property):
    """Opens a connection: without it nothing works.

    Details nobody reads in the table.
    """
    record_property("impl_version", "fake 1.2.3")

def test_rst(record_property):
    """A reset reaches the app as a reset."""
    record_property("impl_version", "fake 1.2.3")
    assert False, "the app saw a FIN\\nnot an RST"

def test_icmp():
    """ping works."""
    pytest.skip("tool missing: ping")

def test_setup_breaks(broken_setup):
    """Never runs."""

@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_checksum(kind):
    """Bad checksums are dropped."""
    assert kind == "tcp", f"relayed a bad {kind} checksum"

@pytest.mark.optional
def test_echo_nowhere():
    """Nobody answers an echo to nowhere (optional: some answer every echo)."""
    assert False, "answered an echo to 198.51.100.99"

@pytest.mark.optional
def test_optional_ok():
    """An optional behaviour that holds."""
'''
ONLY_OPTIONAL_FAILS = '''
import pytest

pytestmark = pytest.mark.conformance

def test_fine():
    """Holds."""

def test_skipped():
    """Skips."""
    pytest.skip("not here")

@pytest.mark.optional
def test_answers_everything():
    """Optional."""
    raise AssertionError("it answered")
'''
UNMARKED = """
def test_not_a_behaviour():
    pass
"""
TIMEOUT = 120


def _run(
    pytester: pytest.Pytester, *args: str, suite: str = FAKE_SUITE, folder: str = "rep"
) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_fake_suite=suite, test_unmarked=UNMARKED)
    out = pytester.path / folder
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--artifacts",
        str(out / "artifacts"),
        "--report",
        str(out),
        *args,
        timeout=TIMEOUT,
    )
    return result, json.loads((out / report.JSON_NAME).read_text())


def _outcomes(document: dict[str, Any], impl: str) -> dict[str, str]:
    results = document["implementations"][impl]["results"]
    return {name: r["outcome"] for name, r in results.items()}


EXPECTED = {
    "tcp_open": "pass",
    "rst": "fail",
    "icmp": "skip",
    "setup_breaks": "error",
    "checksum[tcp]": "pass",
    "checksum[udp]": "fail",
    "echo_nowhere": "fail",
    "optional_ok": "pass",
}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_report_outcomes_reasons_sentences_and_evidence(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    result, document = _run(pytester, *workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # required rows failed
    assert document["schema"] == 2
    assert _outcomes(document, "ztun") == EXPECTED
    behaviours = {b["id"]: b for b in document["behaviours"]}
    assert list(behaviours) == list(EXPECTED)  # collection order, marked tests only
    assert behaviours["tcp_open"]["description"] == "Opens a connection: without it nothing works."
    assert behaviours["echo_nowhere"]["optional"] is True
    assert behaviours["rst"]["optional"] is False
    column = document["implementations"]["ztun"]
    assert (column["version"], column["topology"]) == ("fake 1.2.3", "netns")
    rst = column["results"]["rst"]
    assert rst["reason"] == "the app saw a FIN | not an RST"
    # Evidence paths are relative to the report folder, and exist.
    assert any(a.endswith("seed.txt") for a in rst["artifacts"])
    assert all((pytester.path / "rep" / a).is_file() for a in rst["artifacts"])
    assert column["results"]["tcp_open"]["artifacts"] == []  # a pass keeps nothing
    nowhere = column["results"]["echo_nowhere"]
    assert nowhere["reason"] == "answered an echo to 198.51.100.99"
    assert nowhere["artifacts"], "an optional behaviour's failure keeps its evidence too"
    assert column["results"]["icmp"]["reason"] == "tool missing: ping"
    assert "no TUN for you" in column["results"]["setup_breaks"]["reason"]
    result.stdout.re_match_lines(
        [
            r"tcp_open\s+pass$",
            r"rst\s+FAIL \[1\]$",
            r"icmp\s+skip \[2\]$",
            r"setup_breaks\s+ERROR \[3\]$",
            r"echo_nowhere \(optional\)\s+FAIL \[\d\]$",
            r"ztun \(fake 1.2.3; netns topology, run .*\): DOES NOT CONFORM -- required: "
            r"2 pass, 2 fail, 1 error, 1 skip; optional: 1 pass, 1 fail",
        ]
    )
    run_folder = pytester.path / "rep" / "artifacts" / column["run"]
    assert (run_folder / report.JSON_NAME).exists()
    markdown = (pytester.path / "rep" / report.MARKDOWN_NAME).read_text()
    assert "| rst | FAIL [1](#note-1) |" in markdown
    assert "- **tcp_open**: Opens a connection: without it nothing works." in markdown
    page = (pytester.path / "rep" / report.HTML_NAME).read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "answered an echo to 198.51.100.99" in page
    assert any(f'href="{a}"' in page for a in rst["artifacts"])


def test_optional_failures_and_skips_never_fail_the_run(pytester: pytest.Pytester) -> None:
    result, document = _run(pytester, suite=ONLY_OPTIONAL_FAILS)
    assert result.ret == pytest.ExitCode.OK
    assert _outcomes(document, "ztun") == {
        "fine": "pass",
        "skipped": "skip",
        "answers_everything": "fail",
    }
    assert report.verdict(document, "ztun")


def test_merge_puts_runs_side_by_side(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Two runs into two folders, merged by the command line into a third."""
    _run(pytester, folder="a")
    _run(pytester, "--tun2socks", "sing-box", "--tun2socks-name", "sb", folder="b")
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "report", "--merge", "rep-a", "rep-b", "-o", str(out)],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2 and "rep-a" in done.stderr  # no such folder: a usage error
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "report",
            "--merge",
            "a",
            "b/report.json",
            "-o",
            str(out),
        ],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^behaviour\s+ztun\s+sb$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^rst\s+FAIL \[\d+\]\s+FAIL \[\d+\]$", done.stdout, re.MULTILINE)
    merged = json.loads((out / report.JSON_NAME).read_text())
    assert list(merged["implementations"]) == ["ztun", "sb"]
    for column in merged["implementations"].values():
        for result in column["results"].values():
            assert all((out / a).is_file() for a in result["artifacts"])  # re-based on out
    assert (out / report.HTML_NAME).is_file() and (out / report.MARKDOWN_NAME).is_file()


def test_merge_refuses_two_columns_of_one_name() -> None:
    one = report.empty()
    one["implementations"]["ztun"] = {"results": {}}
    with pytest.raises(report.ReportError, match="appears in two reports"):
        report.merge([one, one])


def test_load_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / report.JSON_NAME).write_text(json.dumps({"schema": 1}))
    with pytest.raises(report.ReportError, match="schema 1, expected 2"):
        report.load(tmp_path)
    with pytest.raises(report.ReportError, match="No such file"):
        report.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("pytest_status", "expected"),
    [
        (pytest.ExitCode.OK, EXIT_OK),
        (pytest.ExitCode.TESTS_FAILED, EXIT_FAILED),
        (pytest.ExitCode.INTERRUPTED, EXIT_FAILED),
        (pytest.ExitCode.INTERNAL_ERROR, EXIT_FAILED),
        (pytest.ExitCode.USAGE_ERROR, EXIT_USAGE),
        (pytest.ExitCode.NO_TESTS_COLLECTED, EXIT_USAGE),
    ],
)
def test_certify_exit_status(pytest_status: int, expected: int) -> None:
    assert exit_status(pytest_status) == expected


SCALED = """
import pytest
from harness.timescale import scaled

@pytest.mark.timeout(10)
def test_bounds_and_timeout_are_scaled(request):
    assert scaled(2.0) == 6.0
    assert request.node.get_closest_marker("timeout").args[0] == 30.0
"""


def test_time_scale_multiplies_bounds_and_timeouts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scaled=SCALED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--time-scale", "3")
    result.assert_outcomes(passed=1)
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--time-scale", "0.5")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "must be a number >= 1" in refused.stderr.str()
