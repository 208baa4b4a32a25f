"""Vagrant boxes through python-vagrant: the Linux box for real, Windows/macOS where possible."""

from __future__ import annotations

from typing import Any

import pytest

from harness import vmimage
from harness.hosts.vagrant import (
    LINUX_BOX,
    VagrantBox,
    VagrantHost,
    VagrantRunner,
    add_box,
    box_unavailable_reason,
    package_linux_box,
)
from harness.testinfra_backends import testinfra_host
from ztun.tools import guest_tool

pytestmark = [pytest.mark.vm]


@pytest.mark.linux
def test_linux_box_packages_adds_and_validates(vm_image: vmimage.GuestImage, tmp_path: Any) -> None:
    """Every step before `vagrant up`: box file, `box add`, `validate`, `status`."""
    box = VagrantBox.linux(vm_image)
    reason = box_unavailable_reason(box)
    if reason:
        pytest.skip(reason)
    box_file = package_linux_box(vm_image)
    assert box_file.stat().st_size > 0
    runner = VagrantRunner(box, tmp_path, sandbox=None)
    add_box(runner)
    names = {(b.name, b.provider) for b in runner.call("box list", "box_list")}
    assert (LINUX_BOX, "libvirt") in names
    runner.validate()
    [status] = runner.call("status", "status")
    assert (status.name, status.state, status.provider) == ("default", "not_created", "libvirt")


@pytest.mark.slow
@pytest.mark.linux
def test_linux_box_up_inside_a_namespace(vagrant_linux: VagrantHost) -> None:
    """`vagrant up` with libvirtd, its NAT network and vagrant all inside our namespaces."""
    host = vagrant_linux
    assert host.run([guest_tool("uname"), "-s"], check=True).stdout.strip() == "Linux"
    infra = testinfra_host(host)
    assert infra.package("tcpdump").is_installed
    assert any(str(a).startswith("192.168.121.") for a in host.addresses("eth0"))
    assert infra.socket("tcp://0.0.0.0:22").is_listening


@pytest.mark.parametrize(
    "os_name",
    [
        pytest.param("windows", marks=pytest.mark.windows),
        pytest.param("macos", marks=pytest.mark.macos),
    ],
)
def test_public_box_comes_up_with_ztun(os_name: str, tmp_path: Any) -> None:
    box = VagrantBox.public(os_name)
    reason = box_unavailable_reason(box)
    if reason:
        pytest.skip(reason)
    runner = VagrantRunner(box, tmp_path, sandbox=None)
    runner.validate()
    host = VagrantHost.up(box, tmp_path / "logs")
    try:
        python = "C:/ztun-venv/Scripts/python" if os_name == "windows" else "ztun-venv/bin/python"
        assert host.run([python, "-c", "import ztun"]).ok
    finally:
        host.close()
