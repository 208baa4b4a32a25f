"""The platform seam: one `Platform` per OS, what it probes, where its state lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ztun.cli import _options, build_parser
from ztun.options import RunOptions
from ztun.platform import PORTABLE, Accelerations, JournalScope, UnsupportedPlatform, for_os
from ztun.platform import current as current_platform
from ztun.route import Journal


def options(*flags: str) -> RunOptions:
    parser = build_parser()
    return _options(parser.parse_args(["run", *flags]), parser)


def test_the_log_line_names_every_acceleration_in_a_fixed_order() -> None:
    accel = Accelerations(splice=True, udp_gso=True)
    assert accel.describe() == (
        "splice=on vnet_hdr=off multi_queue=off udp_gso=on redirect=off kernel_nat=off "
        "tun_reader=loop"
    )
    assert accel.as_dict()["splice"] is True
    assert Accelerations(tun_reader="thread") == PORTABLE


def test_current_is_chosen_once_by_sys_platform() -> None:
    assert current_platform() is current_platform()
    assert (
        current_platform().name
        == {"linux": "linux", "darwin": "darwin", "win32": "windows"}[sys.platform]
    )
    with pytest.raises(UnsupportedPlatform, match="not sunos5"):
        for_os("sunos5")


@pytest.mark.parametrize(
    ("os_name", "state_dir"),
    [("linux", "/run/ztun"), ("darwin", "/var/run/ztun")],
)
def test_state_dir_per_os(os_name: str, state_dir: str) -> None:
    assert for_os(os_name).state_dir == Path(state_dir)


def test_windows_state_dir_is_under_programdata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRAMDATA", "D:\\Data")
    assert for_os("win32").state_dir == Path("D:\\Data") / "ztun"


@pytest.mark.parametrize("os_name", ["darwin", "win32"])
def test_the_kernel_nat_is_linux_only(os_name: str) -> None:
    with pytest.raises(UnsupportedPlatform, match="kernel NAT is not available"):
        for_os(os_name).start_kernel_nat(None)  # type: ignore[arg-type]


def test_macos_and_windows_probe_the_portable_profile() -> None:
    assert for_os("darwin").probe(RunOptions()) == Accelerations(tun_reader="loop")
    assert for_os("darwin").probe(RunOptions(tun_thread=True)) == PORTABLE
    # A Wintun adapter has a read event, not a descriptor: only the thread can read it.
    assert for_os("win32").probe(RunOptions()) == PORTABLE


@pytest.mark.linux
@pytest.mark.skipif(sys.platform != "linux", reason="probes this kernel")
class TestLinux:
    def test_the_default_profile_keeps_every_acceleration(self) -> None:
        accel = for_os("linux").probe(options())
        assert accel.splice and accel.vnet_hdr and accel.udp_gso  # kernel >= 4.18
        assert accel.kernel_nat  # asked for; app.py turns it off if the attach fails
        assert (accel.multi_queue, accel.redirect, accel.tun_reader) == (False, False, "loop")

    def test_flags_select_the_optional_ones(self) -> None:
        accel = for_os("linux").probe(options("--workers", "2", "--redirect", "--tun-thread"))
        assert (accel.multi_queue, accel.redirect, accel.tun_reader) == (True, True, "thread")
        accel = for_os("linux").probe(options("--no-offload", "--relay", "copy", "--no-kernel-nat"))
        assert not accel.vnet_hdr and not accel.splice and not accel.kernel_nat

    def test_portable_turns_everything_off(self) -> None:
        assert for_os("linux").probe(options("--portable")) == PORTABLE

    def test_journals_are_named_per_network_namespace(self, tmp_path: Path) -> None:
        platform = for_os("linux")
        inode = os.stat("/proc/self/ns/net").st_ino
        path = platform.journal_path("zt0")
        assert path == Path(f"/run/ztun/zt0_{inode}.journal")
        assert platform.journal_scope(path) is JournalScope.HERE
        # An inode no namespace has: its routes died with it.
        assert platform.journal_scope(tmp_path / "zt0_1.journal") is JournalScope.GONE

    def test_a_journal_is_owned_by_its_writer_while_that_is_a_live_ztun(
        self, tmp_path: Path
    ) -> None:
        platform = for_os("linux")
        journal = Journal(tmp_path / "zt0_1.journal")
        journal.begin("zt0", None)
        assert platform.live_owner(journal) is None  # our own pid is not an owner
        # A process whose command line says ztun stands for a running ztun.
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", "ztun"], stdin=subprocess.PIPE
        )
        try:
            record = {"op": "begin", "v": 1, "device": "zt0", "netns": None, "pid": child.pid}
            journal.path.write_text(json.dumps(record) + "\n")
            assert platform.is_ztun(child.pid)
            assert platform.live_owner(journal) == child.pid
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)
        assert not platform.is_ztun(child.pid)  # gone (a reused pid would not say ztun)
        assert platform.live_owner(journal) is None
