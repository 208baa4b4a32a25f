"""Per-test artifacts: where a test's pcaps and logs go, and what its report names.

The plugin opens a :class:`TestArtifacts` for every test and makes it *current* while
the test (and its fixtures) run; library code that produces evidence -- ``capture()``,
the topology's process logs, an assertion's first bad packet -- registers it with
:func:`current` without the test having to pass anything around.  When a test fails, the
plugin lists everything registered in a report section; when it passes, its folder is
deleted unless ``--keep-pcaps``.

Outside pytest (a script using the harness) there is no current test: :func:`current`
returns ``None`` and producers fall back to a directory they are given.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "Attachment",
    "SummarisedArtifact",
    "TestArtifacts",
    "activate",
    "current",
    "deactivate",
    "safe_test_dirname",
]

MAX_DIRNAME = 120
"""Longest per-test folder name; longer node ids are cut and suffixed with a hash."""

HASH_CHARS = 8

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_test_dirname(nodeid: str) -> str:
    """A readable, filesystem-safe, collision-resistant folder name for a node id.

    ``tests/harness/test_x.py::test_a`` -> ``tests.harness.test_x.py--test_a``; names
    that needed escaping (parameters) get a short hash of the node id appended.
    """
    readable = nodeid.replace("::", "--").replace("/", ".")
    name = _UNSAFE.sub("-", readable).strip("-.") or "test"
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:HASH_CHARS]
    if len(name) > MAX_DIRNAME:
        name = f"{name[: MAX_DIRNAME - HASH_CHARS - 1]}-{digest}"
    elif name != readable:
        # Lossy (test_a[1/2] and test_a[1:2] would meet): the hash keeps them apart.
        name = f"{name}-{digest}"
    return name


class SummarisedArtifact(Protocol):
    """Anything that can describe itself in a failure report (a Capture does)."""

    @property
    def path(self) -> Path: ...

    def summary(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Attachment:
    """A named piece of evidence: a file and/or a short text for the report."""

    title: str
    path: Path | None = None
    text: str = ""


@dataclass
class TestArtifacts:
    """Evidence of one test. ``dir`` is created on first use."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    dir: Path
    seed: int
    captures: list[SummarisedArtifact] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    log_dirs: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def path(self, *parts: str) -> Path:
        """A path inside the test's folder (parents created)."""
        target = self.dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_capture(self, capture: SummarisedArtifact) -> None:
        with self._lock:
            self.captures.append(capture)

    def attach(self, title: str, *, text: str = "", path: Path | None = None) -> None:
        """Name evidence in the failure report (e.g. "first bad packet" with its hex)."""
        with self._lock:
            self.attachments.append(Attachment(title, path, text))

    def attach_file(self, name: str, data: str | bytes, title: str | None = None) -> Path:
        """Write ``data`` to ``name`` in the test folder and attach it."""
        target = self.path(name)
        if isinstance(data, str):
            target.write_text(data)
        else:
            target.write_bytes(data)
        self.attach(title or name, path=target)
        return target

    def add_log_dir(self, path: Path) -> None:
        """A folder whose ``*.log`` files the report lists (a host's process logs)."""
        with self._lock:
            if path not in self.log_dirs:
                self.log_dirs.append(path)

    def logs(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.log_dirs:
            if folder.is_dir():
                found.extend(sorted(folder.rglob("*.log")))
        return found


_current: TestArtifacts | None = None
_current_lock = threading.Lock()


def activate(artifacts: TestArtifacts) -> None:
    global _current
    with _current_lock:
        _current = artifacts


def deactivate() -> None:
    global _current
    with _current_lock:
        _current = None


def current() -> TestArtifacts | None:
    """The running test's artifacts (``None`` outside a harness-run test)."""
    return _current
