"""This checkout's ztun inside a QEMU guest: from the read-only share, and under the
conformance suite run in the guest's own kernel (its namespaces, TUN and routes)."""

from __future__ import annotations

import json
import os

import pytest

from harness.artifacts import TestArtifacts
from harness.hosts.qemu import GUEST_SHARE, GUEST_VENV, QemuHost

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.linux]

#: Which conformance behaviours run in the guest (``ZTUN_VM_CONFORMANCE`` overrides):
#: TCG makes every packet cost ~10x, so the default is the suite minus its slow tests.
CONFORMANCE_SELECTION = os.environ.get("ZTUN_VM_CONFORMANCE", "conformance and not slow")
CONFORMANCE_TIMEOUT = float(os.environ.get("ZTUN_VM_CONFORMANCE_TIMEOUT", "2400"))
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


def test_conformance_suite_in_guest(qemu_host: QemuHost, artifacts: TestArtifacts) -> None:
    """pytest inside the guest, over the shared checkout; results and pcaps come back."""
    result = qemu_host.run(
        [
            f"{GUEST_VENV}/bin/python3",
            "-m",
            "pytest",
            f"{GUEST_SHARE}/tests/conformance",
            "-m",
            CONFORMANCE_SELECTION,
            "-n",
            "0",
            "-q",
            "-p",
            "no:cacheprovider",
            "--artifacts",
            GUEST_ARTIFACTS,
            "--keep-pcaps",
            "--conformance-json",
            f"{GUEST_ARTIFACTS}/conformance.json",
        ],
        env={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"},
        timeout=CONFORMANCE_TIMEOUT,
    )
    artifacts.attach_file(
        "guest-pytest.txt", result.stdout + result.stderr, "pytest output inside the guest"
    )
    # Everything the guest's run produced (pcaps, logs, the table) lands with this test.
    packed = qemu_host.run(
        ["tar", "-C", GUEST_ARTIFACTS, "-czf", "/tmp/guest-artifacts.tgz", "."], timeout=120.0
    )
    if packed.ok:
        qemu_host.get("/tmp/guest-artifacts.tgz", artifacts.path("guest-artifacts.tgz"))
    table = qemu_host.run(["cat", f"{GUEST_ARTIFACTS}/conformance.json"])
    if table.ok:
        artifacts.attach_file("conformance.json", table.stdout, "conformance table (guest)")
        assert json.loads(table.stdout), "empty conformance table"
    tail = "\n".join(result.stdout.splitlines()[-30:])
    assert result.returncode == 0, f"conformance in guest failed:\n{tail}\n{result.stderr[-2000:]}"
