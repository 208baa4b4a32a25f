"""The conformance table itself (harness.conformance), on a fake suite: no root needed.

Inner pytest sessions (pytester, in a subprocess) run tests marked ``conformance`` that
pass, fail, skip and error; the table and the JSON must say which, why and where the
evidence is -- also under xdist, where only the controller may write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FAKE_SUITE = """
import pytest

pytestmark = pytest.mark.conformance

@pytest.fixture
def broken_setup():
    raise RuntimeError("no TUN for you")

def test_tcp_open(record_property):
    record_property("impl_version", "fake 1.2.3")

def test_rst(record_property):
    record_property("impl_version", "fake 1.2.3")
    assert False, "the app saw a FIN\\nnot an RST"

def test_icmp():
    pytest.skip("tool missing: ping")

def test_setup_breaks(broken_setup):
    pass

@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_checksum(kind):
    assert kind == "tcp", f"relayed a bad {kind} checksum"
"""
UNMARKED = """
def test_not_a_behaviour():
    pass
"""
TIMEOUT = 120


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_fake_suite=FAKE_SUITE, test_unmarked=UNMARKED)
    # The harness plugin arrives by its entry point; the table must be asked for
    # explicitly outside this repository.
    out = pytester.path / "table.json"
    result = pytester.runpytest_subprocess(
        "-p",
        "harness.conformance",
        "-p",
        "no:cacheprovider",
        "--artifacts",
        str(pytester.path / "artifacts"),
        "--conformance-json",
        str(out),
        *args,
        timeout=TIMEOUT,
    )
    return result, json.loads(out.read_text())


def _outcomes(document: dict[str, Any], impl: str) -> dict[str, str]:
    results = document["implementations"][impl]["results"]
    return {name: r["outcome"] for name, r in results.items()}


EXPECTED = {
    "tcp_open": "passed",
    "rst": "failed",
    "icmp": "skipped",
    "setup_breaks": "error",
    "checksum[tcp]": "passed",
    "checksum[udp]": "failed",
}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_table_and_json(pytester: pytest.Pytester, workers: list[str]) -> None:
    result, document = _run(pytester, *workers)
    assert _outcomes(document, "ztun") == EXPECTED
    assert document["behaviours"] == list(EXPECTED)  # collection order, marked tests only
    column = document["implementations"]["ztun"]
    assert column["version"] == "fake 1.2.3"
    rst = column["results"]["rst"]
    assert rst["reason"] == "the app saw a FIN | not an RST"
    assert Path(rst["artifacts"]).name.endswith("test_rst")
    assert column["results"]["icmp"]["reason"] == "tool missing: ping"
    assert "no TUN for you" in column["results"]["setup_breaks"]["reason"]
    text = result.stdout.str()
    assert "tun2socks conformance" in text
    result.stdout.re_match_lines(
        [
            r"tcp_open\s+pass$",
            r"rst\s+FAIL \[1\]$",
            r"icmp\s+skip \[2\]$",
            r"setup_breaks\s+ERROR \[3\]$",
        ]
    )
    assert (pytester.path / "artifacts" / column["run"] / "conformance.json").exists()


def test_columns_merge_across_runs(pytester: pytest.Pytester) -> None:
    _run(pytester)
    result, document = _run(pytester, "--tun2socks", "sing-box")
    assert list(document["implementations"]) == ["ztun", "sing-box"]
    assert _outcomes(document, "sing-box") == _outcomes(document, "ztun") == EXPECTED
    result.stdout.re_match_lines([r"behaviour\s+ztun\s+sing-box"])
