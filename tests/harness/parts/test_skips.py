"""A missing tool fails when dev.sh would have installed it, and skips when nothing can.

The machine's tools are hidden the real way: PATH points at an empty directory, so
``shutil.which`` finds nothing (no root, no fake of the lookup).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import skips


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A PATH with no program on it; the tool cache forgets what it saw before and after."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(skips.PROFILE_ENV, raising=False)
    skips.have_tool.cache_clear()
    yield
    skips.have_tool.cache_clear()


def test_a_tool_dev_sh_installs_fails_with_the_apt_get_line(bare_path: None) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        skips.require_tool("tcpdump", "ping")
    assert "tool missing: tcpdump, ping" in str(failed.value)
    assert str(failed.value).endswith(": apt-get install -y iputils-ping tcpdump")


def test_a_vm_tool_skips_outside_the_vm_profile_and_fails_inside(
    bare_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"tool missing: qemu-img \(apt-get"):
        skips.require_tool("qemu-img")
    monkeypatch.setenv(skips.PROFILE_ENV, "apt vm")
    with pytest.raises(pytest.fail.Exception, match=r"VM_PACKAGES .*qemu-utils$"):
        skips.require_tool("qemu-img")


def test_a_vagrant_tool_fails_only_when_dev_sh_installed_the_vagrant_row(
    bare_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(skips.PROFILE_ENV, "apt vm")
    with pytest.raises(pytest.skip.Exception, match=r"tool missing: vagrant \(apt-get"):
        skips.require_tool("vagrant")
    monkeypatch.setenv(skips.PROFILE_ENV, "apt vm vagrant")
    with pytest.raises(
        pytest.fail.Exception, match=r"VAGRANT_PACKAGES .*: apt-get install -y vagrant$"
    ):
        skips.require_tool("vagrant")


def test_a_tool_nothing_here_installs_skips_saying_why(bare_path: None) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"^tool missing: prlctl \(prlctl: Para"):
        skips.require_tool("prlctl")


def test_an_unregistered_tool_is_an_error_not_a_skip(bare_path: None) -> None:
    unregistered = "frobnicator"  # a variable: the registry test rejects the literal itself
    with pytest.raises(KeyError, match="frobnicator"):
        skips.require_tool(unregistered)


def test_present_tools_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    skips.have_tool.cache_clear()
    skips.require_tool("sh")  # dash is Essential: on every Debian machine (no skip, no raise)
    assert skips.have_tool("sh")


def test_the_header_names_each_missing_tool_once(bare_path: None) -> None:
    header = skips.missing_tools_header()
    assert header is not None
    assert header.startswith("tools missing: ")
    words = header.replace(",", " ").replace(";", " ").split()
    assert words.count("ping") == words.count("prlctl") == 1
    assert "(tests using them FAIL: apt-get install -y " in header
    assert "(VM_PACKAGES, not this run's profile: apt-get install -y " in header
