"""This checkout's ztun inside a QEMU guest: from the read-only share, and under the
conformance suite run in the guest's own kernel (its namespaces, TUN and routes)."""

from __future__ import annotations

import json
import os

import pytest

from harness.artifacts import TestArtifacts
from harness.hosts.qemu import GUEST_SHARE, GUEST_VENV, QemuHost
from ztun.tools import guest_tool

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.linux]

#: Which conformance behaviours run in the guest (``ZTUN_VM_CONFORMANCE`` overrides, a
#: ``-m`` expression): TCG makes every packet cost ~10x, so the default leaves out the
#: behaviours marked slow (100 MiB each way, a 90 s idle flow).
CONFORMANCE_SELECTION = os.environ.get("ZTUN_VM_CONFORMANCE", "not slow")
CONFORMANCE_NAMES = os.environ.get("ZTUN_VM_CONFORMANCE_K")
"""A ``-k`` expression narrowing the guest's run further (e.g. the core TCP/UDP/ICMP rows:
the whole selection takes a TCG guest the better part of an hour)."""
CONFORMANCE_TIMEOUT = float(os.environ.get("ZTUN_VM_CONFORMANCE_TIMEOUT", "2400"))
TIME_SCALE = os.environ.get("ZTUN_VM_TIME_SCALE", "10")
"""Time bounds in a TCG guest: every packet goes through the emulator (~10x the cost of
KVM here), so each behaviour's bound and timeout is multiplied by this (--time-scale)."""
GUEST_ARTIFACTS = "/tmp/artifacts"


def test_ztun_runs_from_the_share(qemu_host: QemuHost) -> None:
    where = qemu_host.run(
        [f"{GUEST_VENV}/bin/python3", "-c", "import ztun, harness; print(ztun.__file__)"],
        check=True,
        timeout=120.0,
    )
    assert where.stdout.startswith(f"{GUEST_SHARE}/ztun/")
    helped = qemu_host.run([f"{GUEST_VENV}/bin/ztun", "--help"], timeout=120.0)
    assert helped.ok, helped.stderr
    assert "run" in helped.stdout


@pytest.mark.parametrize("topology", ["netns", "single"])
def test_conformance_suite_in_guest(
    qemu_host: QemuHost, artifacts: TestArtifacts, topology: str
) -> None:
    """``ztun-harness certify`` inside the guest, over the shared checkout: namespaces of the
    guest's own kernel (netns), or one namespace holding everything (single). The report,
    pcaps and logs come back with this test."""
    report = f"{GUEST_ARTIFACTS}/{topology}"
    result = qemu_host.run(
        [
            f"{GUEST_VENV}/bin/python3",
            "-m",
            "harness",
            "certify",
            "--topology",
            topology,
            "-m",
            CONFORMANCE_SELECTION,
            "--time-scale",
            TIME_SCALE,
            "--report",
            report,
            "--keep-pcaps",
            *(["-k", CONFORMANCE_NAMES] if CONFORMANCE_NAMES else []),
        ],
        env={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"},
        timeout=CONFORMANCE_TIMEOUT,
    )
    artifacts.attach_file(
        "guest-certify.txt", result.stdout + result.stderr, "certify output inside the guest"
    )
    # Everything the guest's run produced (pcaps, logs, the report) lands with this test.
    packed = qemu_host.run(
        [guest_tool("tar"), "-C", report, "-czf", "/tmp/guest-report.tgz", "."], timeout=120.0
    )
    if packed.ok:
        qemu_host.get("/tmp/guest-report.tgz", artifacts.path("guest-report.tgz"))
    table = qemu_host.run([guest_tool("cat"), f"{report}/report.json"])
    if table.ok:
        artifacts.attach_file("report.json", table.stdout, "conformance report (guest)")
        assert json.loads(table.stdout)["implementations"], "empty conformance report"
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert result.returncode == 0, f"certify in guest failed:\n{tail}\n{result.stderr[-2000:]}"
