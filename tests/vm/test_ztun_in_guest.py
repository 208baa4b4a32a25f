"""This checkout's ztun inside a QEMU guest: from the read-only share, and under the
conformance suite run in the guest's own kernel (its namespaces, TUN and routes)."""

from __future__ import annotations

import os

import pytest

from harness.artifacts import TestArtifacts
from harness.hosts.qemu import GUEST_SHARE, GUEST_VENV, QemuHost
from tests.vm.guest_suite import certify_in_guest, failure_tail

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.linux]

#: Which conformance behaviours run in the guest (``ZTUN_VM_CONFORMANCE`` overrides, a
#: ``-m`` expression): TCG makes every packet cost ~10x, so the default leaves out the
#: behaviours marked slow (100 MiB each way, a 90 s idle flow).
CONFORMANCE_SELECTION = os.environ.get("ZTUN_VM_CONFORMANCE", "not slow")
CONFORMANCE_NAMES = os.environ.get("ZTUN_VM_CONFORMANCE_K")
"""A ``-k`` expression narrowing the guest's run further (e.g. the core TCP/UDP/ICMP rows:
the whole selection takes a TCG guest the better part of an hour)."""
CONFORMANCE_TIMEOUT = float(os.environ.get("ZTUN_VM_CONFORMANCE_TIMEOUT", "2400"))


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
    result = certify_in_guest(
        qemu_host,
        artifacts,
        topology=topology,
        marks=CONFORMANCE_SELECTION,
        keyword=CONFORMANCE_NAMES,
        timeout=CONFORMANCE_TIMEOUT,
    )
    assert result.returncode == 0, f"certify in guest failed:\n{failure_tail(result)}"
