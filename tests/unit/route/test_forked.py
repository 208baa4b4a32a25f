"""ztun.forked: netlink jobs run in a forked child; what crosses back must unpickle in a
parent that never imports pyroute2 (nor ssl: `ztun run` keeps it out)."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from ztun.forked import call_in_child
from ztun.route.model import RestoreReport


class ForeignError(Exception):
    """Stands in for a library exception (pyroute2's NetlinkError carries `code`)."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code


ForeignError.__module__ = "somelib.errors"  # as if raised by another package


def test_a_value_comes_back() -> None:
    assert call_in_child(lambda: RestoreReport(removed=3, errors=["x"])) == RestoreReport(
        removed=3, errors=["x"]
    )


def test_builtin_exceptions_cross_unchanged() -> None:
    def fail() -> None:
        raise ValueError("bad prefix")

    with pytest.raises(ValueError, match="bad prefix"):
        call_in_child(fail)


def test_library_exceptions_become_oserror_with_their_errno() -> None:
    def fail() -> None:
        raise ForeignError(errno.EEXIST, "File exists")

    with pytest.raises(OSError, match="ForeignError: File exists") as caught:
        call_in_child(fail)
    assert caught.value.errno == errno.EEXIST


def test_library_exceptions_without_errno_become_runtimeerror() -> None:
    def fail() -> None:
        raise ForeignError(None, "odd")

    with pytest.raises(RuntimeError, match="ForeignError: odd"):
        call_in_child(fail)


def test_a_report_unpickles_in_a_process_without_ssl() -> None:
    """The parent of `ztun run` has sys.modules['ssl'] = None; the child may import the
    netlink code (pyroute2 needs ssl), and its RestoreReport must unpickle in the parent
    without pyroute2."""
    code = (
        "import sys\n"
        "sys.modules['ssl'] = None\n"
        "from ztun.forked import call_in_child\n"
        "def job():\n"
        "    from ztun.route import linux\n"
        "    return linux.RestoreReport(removed=2)\n"
        "report = call_in_child(job)\n"
        "assert report.removed == 2, report\n"
        "assert 'pyroute2' not in sys.modules, 'the parent imported pyroute2'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
