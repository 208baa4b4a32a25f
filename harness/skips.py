"""Skips whose reason names what is missing (a tool, root, a kernel feature).

A test that cannot run here must say *why* in one line of ``-ra`` output -- "tool
missing: tcpdump", not an ``OSError`` traceback -- so a CI matrix shows what to install.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest

__all__ = ["have_tool", "is_root", "require_root", "require_tool"]


@functools.cache
def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


def is_root() -> bool:
    return os.geteuid() == 0


def require_tool(*names: str) -> None:
    """Skip the running test unless every tool in ``names`` is on PATH."""
    missing = [name for name in names if not have_tool(name)]
    if missing:
        pytest.skip(f"tool missing: {', '.join(missing)}")


def require_root() -> None:
    """Skip unless root: namespaces, veths and tcpdump need CAP_SYS_ADMIN/CAP_NET_ADMIN."""
    if not is_root():
        pytest.skip("requires root (CAP_SYS_ADMIN + CAP_NET_ADMIN) for network namespaces")
