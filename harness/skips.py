"""Skips (and failures) whose reason names what is missing (a tool, root, a kernel feature).

A test that cannot run here must say *why* in one line of ``-ra`` output -- "tool
missing: tcpdump", not an ``OSError`` traceback -- so a CI matrix shows what to install.

A missing tool is a *failure*, not a skip, when a ``dev.sh`` list of the running profile
installs it: then pytest was run without ``dev.sh`` (or the list lost a package), and a
skip would hide exactly the gap a fresh machine falls into.  The message is the
``apt-get install -y ...`` line that closes it.  ``dev.sh`` exports the profile as
``ZTUN_DEV_PROFILES`` (``apt`` for test/demo/bench, ``apt vm vagrant`` for the VM row --
``apt vm`` with ``ZTUN_VAGRANT=0`` -- and for any command with ``ZTUN_VAGRANT=1``); plain
``pytest`` means ``apt``.
Tools no list of the profile provides (Vagrant outside it, VirtualBox, ...) skip with
``tool missing: X (why)``.
"""

from __future__ import annotations

import functools
import os

import pytest

from ztun.tools import TOOLS, Source, Tool, apt_install_line, install_hint, which

__all__ = [
    "PROFILE_ENV",
    "dev_profiles",
    "have_tool",
    "is_root",
    "missing_tools_header",
    "require_root",
    "require_tool",
]

PROFILE_ENV = "ZTUN_DEV_PROFILES"
PROFILE_SOURCES = {"apt": Source.APT, "vm": Source.VM, "vagrant": Source.VAGRANT}
"""The words of ``ZTUN_DEV_PROFILES`` and the dev.sh list each stands for."""


def dev_profiles() -> frozenset[Source]:
    """The dev.sh lists this run may assume installed (``apt`` unless dev.sh says more)."""
    words = os.environ.get(PROFILE_ENV, "apt").split()
    return frozenset(PROFILE_SOURCES[word] for word in words if word in PROFILE_SOURCES)


@functools.cache
def have_tool(name: str) -> bool:
    """Whether the registered tool ``name`` is on PATH (an unknown name raises)."""
    return which(name) is not None


def is_root() -> bool:
    return os.geteuid() == 0


def require_tool(*names: str) -> None:
    """Fail or skip the running test unless every registered tool in ``names`` is on PATH."""
    absent = [TOOLS[name] for name in names if not have_tool(name)]
    if not absent:
        return
    installable = [t for t in absent if t.source in dev_profiles()]
    if installable:
        lists = ", ".join(sorted({str(t.source.dev_sh_list) for t in installable}))
        pytest.fail(
            f"tool missing: {', '.join(t.name for t in installable)}, although dev.sh's "
            f"{lists} installs it (was pytest run without ./dev.sh?): "
            f"{apt_install_line(installable)}",
            pytrace=False,
        )
    pytest.skip("tool missing: " + ", ".join(f"{t.name} ({install_hint([t])})" for t in absent))


def missing_tools_header() -> str | None:
    """One report-header line naming every registered tool this machine lacks, or None."""
    absent: list[Tool] = [t for t in TOOLS.values() if not have_tool(t.name)]
    if not absent:
        return None
    by_source: dict[Source, list[Tool]] = {}
    for t in absent:
        by_source.setdefault(t.source, []).append(t)
    parts = []
    for source, tools in by_source.items():
        names = ", ".join(t.name for t in tools)
        if source in dev_profiles():
            parts.append(f"{names} (tests using them FAIL: {apt_install_line(tools)})")
        elif source.dev_sh_list is not None:
            line = apt_install_line(tools)
            parts.append(f"{names} ({source.dev_sh_list}, not this run's profile: {line})")
        elif source is Source.PYPI:
            parts.append(f"{names} ({install_hint(tools)})")
        else:
            parts.append(f"{names} (no dev.sh list installs them here; their tests skip)")
    return "tools missing: " + "; ".join(parts)


def require_root() -> None:
    """Skip unless root: namespaces, veths and tcpdump need CAP_SYS_ADMIN/CAP_NET_ADMIN."""
    if not is_root():
        pytest.skip("requires root (CAP_SYS_ADMIN + CAP_NET_ADMIN) for network namespaces")
