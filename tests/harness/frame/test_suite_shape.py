"""The shipped suite's shape: every behaviour has its sentence, and the package carries
everything an installed harness needs at run time."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import harness.suite
from harness import vmimage
from harness.impls.singbox import CONFIG_TEMPLATE

MIN_SENTENCE = 60
"""Characters: "what it checks" and "why a failure is a defect" do not fit in fewer."""


def _behaviours() -> list[tuple[str, object]]:
    found = []
    for module in pkgutil.iter_modules(harness.suite.__path__):
        if not module.name.startswith("test_"):
            continue
        loaded = importlib.import_module(f"harness.suite.{module.name}")
        for name, function in vars(loaded).items():
            if name.startswith("test_") and inspect.getmodule(function) is loaded:
                found.append((f"{module.name}.{name}", function))
    return found


def test_every_behaviour_says_what_it_checks_and_why() -> None:
    behaviours = _behaviours()
    assert len(behaviours) >= 15
    short = []
    for name, function in behaviours:
        sentence = (inspect.getdoc(function) or "").split("\n\n", 1)[0]
        if len(sentence) < MIN_SENTENCE or ":" not in sentence:
            short.append(f"{name}: {sentence!r}")
    assert not short, "behaviours without a sentence 'what: why':\n" + "\n".join(short)


def test_every_behaviour_is_marked_conformance() -> None:
    for name, function in _behaviours():
        module = sys.modules[function.__module__]  # type: ignore[attr-defined]
        marks = [m.name for m in getattr(module, "pytestmark", [])]
        assert "conformance" in marks, name


def test_run_time_files_are_package_data() -> None:
    """What certify and `harness vm build` read lives inside the harness package."""
    package = Path(harness.suite.__file__).parent.parent
    for path in (vmimage.RECIPE_DIR / "packages.txt", vmimage.RECIPE_DIR / "customize.sh"):
        assert path.is_file() and path.is_relative_to(package), path
    assert CONFIG_TEMPLATE.is_file() and CONFIG_TEMPLATE.is_relative_to(package)


def _certify(report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ztun-harness certify --report REPORT ARGS...`` run from REPORT."""
    return subprocess.run(
        [sys.executable, "-m", "harness", "certify", "--report", str(report), *args],
        cwd=report,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tun2socks", "tun2x"], "unknown tun2socks implementation 'tun2x'"),
        (["--tun2socks-command", "tun2x {dev}"], "unknown placeholder {dev}"),
        (["--tun2socks-ready", "link"], "only apply with --tun2socks-command"),
        (["-k", "no_behaviour_has_this_name"], "no behaviour selected (-k/-m matched none)"),
        (
            ["--single-host", "local", "-k", "tcp_open"],
            "--single-host local applies only to --topology single",
        ),
    ],
)
def test_certify_usage_errors_and_empty_selections_exit_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = _certify(tmp_path, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


@pytest.mark.netns
@pytest.mark.linux
@pytest.mark.usefixtures("require_root")
def test_certify_of_an_implementation_that_cannot_start_exits_2(tmp_path: Path) -> None:
    """A command that does not exist skips every behaviour (the adapter's
    ``unavailable_reason``): that certifies nothing, so it must not exit 0 as a pass."""
    done = _certify(
        tmp_path, "--tun2socks-command", "/nonexistent/tun2x -dev {device}", "-k", "tcp_open"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nothing certified: every behaviour was skipped" in done.stderr, done.stderr
    assert "/nonexistent/tun2x not found" in done.stderr, done.stderr
    assert "NOTHING CERTIFIED (every behaviour skipped)" in done.stdout, done.stdout


def test_example_lists_and_prints_the_shipped_config_templates(tmp_path: Path) -> None:
    """``ztun-harness example`` is how an installed user finds the sing-box template."""

    def example(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness", "example", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = example()
    assert listed.returncode == 0 and "sing-box.json" in listed.stdout.split(), listed
    printed = example("sing-box.json")
    assert printed.returncode == 0 and printed.stdout == CONFIG_TEMPLATE.read_text()
    unknown = example("tun2x.yaml")
    assert unknown.returncode == 2
    assert "no example 'tun2x.yaml' (shipped: sing-box.json)" in unknown.stderr
