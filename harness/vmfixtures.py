"""pytest fixtures for VM hosts (the plugin imports this module's fixtures).

Cost ladder, cheapest first: the image and the saved guest state are built once per
machine (cached under ``~/.cache/ztun/vms``), resolved once per session here, and each
test restores its own guest from the state in a few seconds and throws it away after.
A test that cannot run (no QEMU, no mmdebstrap, not root) skips with a reason naming what
to install.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.artifacts import TestArtifacts
from harness.hosts.base import Host
from harness.skips import require_tool

if TYPE_CHECKING:
    # Imported lazily below: the plugin loads this module on every OS (Windows and macOS
    # CI rows too), where paramiko/python-vagrant/fcntl need not be importable.
    from harness import vmimage
    from harness.hosts.qemu import QemuHost, SavedState
    from harness.hosts.vagrant import VagrantHost

__all__ = [
    "qemu_host",
    "testinfra_for",
    "vagrant_linux",
    "vm_image",
    "vm_state",
    "vm_testinfra",
]


def _require_vm_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("VM image build needs root (mmdebstrap --mode=root)")
    require_tool("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs")


@pytest.fixture(scope="session")
def vm_image() -> vmimage.GuestImage:
    """The Debian 12 guest image for this recipe (built on first use, then cached)."""
    _require_vm_tools()
    from harness import vmimage

    return vmimage.ensure_image()


@pytest.fixture(scope="session")
def vm_state(vm_image: vmimage.GuestImage) -> SavedState:
    """The booted-and-saved guest every QemuHost restores from (KVM if it works, else TCG)."""
    from harness.hosts.qemu import accelerator, ensure_state

    return ensure_state(vm_image, accelerator(vm_image))


def _artifacts(request: pytest.FixtureRequest) -> TestArtifacts | None:
    """The plugin's per-test artifacts, when the plugin is active."""
    try:
        value: TestArtifacts = request.getfixturevalue("artifacts")
    except pytest.FixtureLookupError:
        return None
    return value


@pytest.fixture
def qemu_host(
    request: pytest.FixtureRequest,
    vm_image: vmimage.GuestImage,
    vm_state: SavedState,
    tmp_path: Path,
) -> Iterator[QemuHost]:
    """A fresh guest restored from the saved state; powered off and removed after the test.

    The repository is mounted read-only at ``/mnt/repo``; ``/opt/ztun`` holds a venv with
    the harness's dependencies; ``ztun`` on the guest's PATH runs this checkout.
    """
    from harness.hosts.qemu import QemuHost

    artifacts = _artifacts(request)
    log_dir = artifacts.path("vm") if artifacts is not None else tmp_path / "vm"
    if artifacts is not None:
        artifacts.add_log_dir(log_dir)
    host = QemuHost.start("vm", log_dir, image=vm_image, accel=vm_state.accel)
    try:
        if artifacts is not None:
            timings = ", ".join(f"{k} {v:.2f} s" for k, v in host.timings.items())
            artifacts.attach("vm", text=f"accel {host.accel}; {timings}")
        yield host
    finally:
        host.close()


@pytest.fixture
def vm_testinfra(qemu_host: QemuHost) -> Any:
    """testinfra's ``host`` for the guest (paramiko over the guest's own connection)."""
    from harness.testinfra_backends import testinfra_host

    return testinfra_host(qemu_host)


@pytest.fixture
def testinfra_for() -> Callable[[Host], Any]:
    """``testinfra_for(host)``: a testinfra Host for any harness Host (netns or VM)."""
    from harness.testinfra_backends import testinfra_host

    return testinfra_host


@pytest.fixture(scope="module")
def vagrant_linux(
    vm_image: vmimage.GuestImage, vm_state: SavedState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VagrantHost]:
    """The Linux Vagrant box (libvirt, inside a private network namespace), if it comes up.

    One box per test module: ``vagrant up`` under TCG takes minutes.  Its logs (vagrant,
    libvirtd, the serial console) are kept in the module's temporary folder.
    """
    from harness.hosts.vagrant import (
        VagrantBox,
        VagrantHost,
        box_unavailable_reason,
        package_linux_box,
    )

    box = VagrantBox.linux(vm_image, vm_state)
    require_tool(*box.tools)
    reason = box_unavailable_reason(box)
    if reason:
        pytest.skip(reason)
    package_linux_box(vm_image, vm_state)
    host = VagrantHost.up(box, tmp_path_factory.mktemp("vagrant-linux"))
    try:
        yield host
    finally:
        host.close()
