"""Vagrant boxes through python-vagrant: the Linux box for real, Windows/macOS where possible.

The Linux box comes up once for this module (``vagrant up`` of a TCG guest takes minutes,
see vms/README.md): libvirtd, its NAT network and ``vagrant`` all run inside network and
mount namespaces of the harness's own (:class:`harness.hosts.vagrant.LibvirtSandbox`).
The last test destroys it and checks that the root namespace gained nothing -- no link,
no address, no route, no rule -- while it ran and after.

The Windows and macOS boxes are public boxes that need VirtualBox/Hyper-V or Parallels on
their own hardware; nothing here can fetch or boot them, and their tests skip saying so.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import report, vmimage
from harness.artifacts import TestArtifacts
from harness.hosts.netns import list_netns
from harness.hosts.qemu import GUEST_SHARE, GUEST_VENV, SavedState
from harness.hosts.vagrant import (
    LINUX_BOX,
    LibvirtSandbox,
    VagrantBox,
    VagrantHost,
    VagrantRunner,
    add_box,
    box_unavailable_reason,
    package_linux_box,
)
from harness.hygiene import RootSnapshot
from harness.skips import require_tool
from harness.testinfra_backends import testinfra_host
from tests.harness.frame.sandbox_owner import LIBVIRT_OWNER, kill_owner_then_cleanup
from tests.vm.guest_suite import GUEST_ARTIFACTS, certify_in_guest, failure_tail
from ztun.tools import guest_tool, tool

pytestmark = [pytest.mark.vm]

#: The libvirt NAT network vagrant-libvirt creates (its default management network).
VAGRANT_NET = "192.168.121."
#: TCP, UDP and ICMP through ztun in the box's kernel: one conformance behaviour each.
CORE_BEHAVIOURS = "test_tcp_open or test_udp_echo_v4 or (test_icmp_echo and not nowhere)"
CORE_TIMEOUT = float(os.environ.get("ZTUN_VM_CONFORMANCE_TIMEOUT", "1200"))


@dataclass
class LinuxBoxRun:
    """The module's box and what the root namespace looked like before and during it."""

    host: VagrantHost
    root_before: RootSnapshot
    root_during: list[RootSnapshot] = field(default_factory=list)


@pytest.fixture(scope="module")
def linux_box(request: pytest.FixtureRequest) -> LinuxBoxRun:
    # The snapshot first, explicitly: before the sandbox, libvirtd or the box exist.
    before = RootSnapshot.take()
    host: VagrantHost = request.getfixturevalue("vagrant_linux")
    return LinuxBoxRun(host, before, [RootSnapshot.take()])


def _sandbox_view(run: LinuxBoxRun, argv: list[str]) -> str:
    sandbox = run.host.sandbox
    assert sandbox is not None, "the Linux box always runs in a libvirt sandbox"
    return sandbox.netns.run(argv, check=True).stdout


@pytest.mark.linux
def test_linux_box_packages_adds_and_validates(
    vm_image: vmimage.GuestImage, vm_state: SavedState, tmp_path: Path
) -> None:
    """Every step before `vagrant up`: box file, `box add`, then `validate` and `status`
    against a sandboxed libvirtd (there is no system libvirtd to ask), which goes away."""
    box = VagrantBox.linux(vm_image, vm_state)
    require_tool(*box.tools)
    reason = box_unavailable_reason(box)
    if reason:
        pytest.skip(reason)
    box_file = package_linux_box(vm_image, vm_state)
    assert box_file.stat().st_size > 0
    outside, inside = tmp_path / "outside", tmp_path / "sandbox"
    outside.mkdir()
    inside.mkdir()
    add_box(VagrantRunner(box, outside, sandbox=None))
    sandbox = LibvirtSandbox(inside)
    try:
        runner = VagrantRunner(box, inside, sandbox)
        names = {(b.name, b.provider) for b in runner.call("box list", "box_list")}
        assert (LINUX_BOX, "libvirt") in names
        runner.validate()
        [status] = runner.call("status", "status")
        assert (status.name, status.state, status.provider) == ("default", "not_created", "libvirt")
    finally:
        sandbox.close()
    assert list_netns(sandbox.name) == []


@pytest.mark.linux
def test_a_killed_owners_libvirt_sandbox_is_removed_by_cleanup(
    require_root: None, tmp_path: Path
) -> None:
    """A process that owns a running sandbox (libvirtd in its namespaces) dies by SIGKILL:
    cleanup keeps the namespace while the owner lives, then kills libvirtd and removes it
    (a stopped run left ``ztvagrant29431-1`` behind before cleanup knew the prefix)."""
    require_tool("libvirtd", "virsh")
    kill_owner_then_cleanup(LIBVIRT_OWNER, tmp_path)


@pytest.mark.slow
@pytest.mark.linux
def test_linux_box_up_inside_a_namespace(linux_box: LinuxBoxRun) -> None:
    """`vagrant up` with libvirtd, its NAT network and vagrant all inside our namespaces."""
    host = linux_box.host
    assert host.run([guest_tool("uname"), "-s"], check=True).stdout.strip() == "Linux"
    address = next(str(a) for a in host.addresses("eth0") if str(a).startswith(VAGRANT_NET))
    # The box's network is the sandbox's: its bridge holds the gateway, its tap the box.
    sandbox_addresses = _sandbox_view(linux_box, [tool("ip"), "-o", "address", "show"])
    assert f"inet {VAGRANT_NET}1/24" in sandbox_addresses, sandbox_addresses
    bridges = _sandbox_view(linux_box, [tool("ip"), "-o", "link", "show", "type", "bridge"])
    assert bridges.strip(), "no bridge in the sandbox: the box's network is somewhere else"
    taps = _sandbox_view(linux_box, [tool("ip"), "-o", "link", "show", "master", "virbr0"])
    assert "vnet" in taps, taps
    print(f"box at {address}; vagrant up steps: {host.timings}")


@pytest.mark.slow
@pytest.mark.linux
def test_testinfra_on_the_box(linux_box: LinuxBoxRun) -> None:
    infra = testinfra_host(linux_box.host)
    assert infra.backend.get_connection_type() == "paramiko"
    for package in ("tcpdump", "microsocks", "dante-server", "nftables"):
        assert infra.package(package).is_installed, package
    assert any(a.startswith(VAGRANT_NET) for a in infra.interface("eth0").addresses)
    assert f"default via {VAGRANT_NET}1 dev eth0" in infra.check_output("ip route")
    assert infra.socket("tcp://0.0.0.0:22").is_listening
    # The checkout arrives over vagrant-libvirt's 9p synced folder, read-only.
    share = infra.mount_point(GUEST_SHARE)
    assert share.exists and share.filesystem == "9p", share
    assert "ro" in share.options, share.options
    assert infra.file(f"{GUEST_SHARE}/pyproject.toml").contains('name = "ztun"')
    denied = infra.run(f"touch {GUEST_SHARE}/should-not-exist")
    assert denied.rc != 0 and "Read-only" in denied.stderr
    # The venv came with the box (the QEMU guests' provisioned disk) and runs the share.
    ztun = infra.file(f"{GUEST_VENV}/bin/ztun")
    assert ztun.is_file and ztun.mode & 0o111
    where = infra.check_output(f"{GUEST_VENV}/bin/python3 -c 'import ztun; print(ztun.__file__)'")
    assert where.startswith(f"{GUEST_SHARE}/ztun/"), where


@pytest.mark.slow
@pytest.mark.linux
def test_ztun_carries_tcp_udp_and_ping_in_the_box(
    linux_box: LinuxBoxRun, artifacts: TestArtifacts
) -> None:
    """ztun from the share, in the box's own kernel: TCP, UDP and ICMP behaviours, with the
    command the Windows and macOS boxes run (``certify --topology single``)."""
    result = certify_in_guest(
        linux_box.host,
        artifacts,
        topology="single",
        keyword=CORE_BEHAVIOURS,
        timeout=CORE_TIMEOUT,
    )
    linux_box.root_during.append(RootSnapshot.take())
    assert result.returncode == 0, f"certify in the box failed:\n{failure_tail(result)}"
    document = json.loads(
        linux_box.host.run([guest_tool("cat"), f"{GUEST_ARTIFACTS}/single/report.json"]).stdout
    )
    outcomes = {k: r["outcome"] for k, r in document["implementations"]["ztun"]["results"].items()}
    assert outcomes == {"tcp_open": "pass", "udp_echo_v4": "pass", "icmp_echo": "pass"}


@pytest.mark.slow
@pytest.mark.linux
def test_root_namespace_gained_nothing(linux_box: LinuxBoxRun) -> None:
    """Last in this module: while the box ran, and after it is destroyed, the root
    namespace has no link, address, route or rule it did not have before."""
    run = linux_box
    run.root_during.append(RootSnapshot.take())
    for during in run.root_during:
        assert during.added_since(run.root_before) == []
    sandbox = run.host.sandbox
    assert sandbox is not None
    workdir = run.host.runner.workdir
    run.host.close()  # vagrant destroy, libvirtd stopped, the namespaces removed
    assert RootSnapshot.take().added_since(run.root_before) == []
    assert list_netns(sandbox.name) == []
    assert sandbox.process is not None and sandbox.process.poll() is not None
    assert not workdir.exists()


@pytest.mark.parametrize(
    "os_name",
    [
        pytest.param("windows", marks=pytest.mark.windows),
        pytest.param("macos", marks=pytest.mark.macos),
    ],
)
def test_public_box_runs_the_single_host_suite(os_name: str, tmp_path: Path) -> None:
    """`vagrant up` provisions ztun and runs the single-host suite (the Vagrantfile's
    documented command); its report comes back through the two-way synced folder.

    Needs VirtualBox/Hyper-V (Windows) or Parallels on a Mac: here it always skips."""
    box = VagrantBox.public(os_name)
    require_tool(*box.tools)
    reason = box_unavailable_reason(box)
    if reason:
        pytest.skip(reason)
    folder = vmimage.REPO_ROOT / "artifacts" / f"vagrant-{os_name}"
    shutil.rmtree(folder, ignore_errors=True)
    host = VagrantHost.up(box, tmp_path / "logs")
    try:
        python = "C:/ztun-venv/Scripts/python" if os_name == "windows" else "ztun-venv/bin/python"
        assert host.run([python, "-c", "import ztun"]).ok
    finally:
        host.close()
    document, _ = report.load(folder)
    assert document["implementations"]["ztun"]["topology"] == "single"
    assert report.verdict(document, "ztun"), "\n".join(report.render_text(document))
