"""The crash journal: every system change is on disk *before* it is made.

Format: JSON lines, one record per line, each written with ``fsync`` before the change it
announces is applied, so after a SIGKILL (or a power cut) the journal names a superset of
what the kernel holds.  Restore therefore tolerates entries that were never applied.

Records::

    {"op": "begin", "v": 1, "device": "ztun0", "netns": null, "pid": 123, "time": 1.7e9}
    {"op": "intent", "seq": 0, "change": {...}}    # about to apply change 0
    {"op": "done", "seq": 0}                       # change 0 is in the kernel
    {"op": "preexisting", "seq": 1}                # kernel already had it: not ours, keep it
    {"op": "applied"}                              # the whole plan is in place

A torn last line (crash inside ``write``) is ignored; a bad line elsewhere means the file
is not ours and is refused rather than guessed at.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztun.route.model import JournalChange, change_from_json

JOURNAL_VERSION = 1
DEFAULT_RUN_DIR = Path("/run/ztun")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class JournalError(RuntimeError):
    """The journal cannot be read or written (message names the file)."""


def default_journal_path(device: str, run_dir: Path = DEFAULT_RUN_DIR) -> Path:
    """``/run/ztun/<device>.journal``: /run is tmpfs, so a reboot (which also drops every
    route we made) drops the journal too."""
    return run_dir / f"{_SAFE_NAME.sub('_', device)}.journal"


@dataclass(slots=True)
class JournalState:
    """What a journal says: the changes announced, which were ours, whether all applied."""

    device: str | None = None
    netns: str | None = None
    pid: int | None = None
    begun: float | None = None
    intents: dict[int, JournalChange] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    preexisting: set[int] = field(default_factory=set)
    applied: bool = False

    def to_undo(self) -> list[tuple[int, JournalChange]]:
        """Changes restore must remove, newest first (never the pre-existing ones)."""
        return sorted(
            ((seq, ch) for seq, ch in self.intents.items() if seq not in self.preexisting),
            key=lambda item: item[0],
            reverse=True,
        )


class Journal:
    """An append-only, fsynced JSON-lines file at ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def exists(self) -> bool:
        """True when a journal is on disk (a previous run did not finish its restore)."""
        return self.path.exists()

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc.strerror}") from exc
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def begin(self, device: str, netns: str | None) -> None:
        """Start a new journal; refuses to overwrite one that still needs a restore."""
        if self.exists() and self.read().intents:
            raise JournalError(
                f"journal {self.path} from an earlier run still lists changes;"
                " restore it first (ztun cleanup)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise JournalError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        self.path.unlink(missing_ok=True)
        self._append(
            {
                "op": "begin",
                "v": JOURNAL_VERSION,
                "device": device,
                "netns": netns,
                "pid": os.getpid(),
                # When it was begun (Unix time): a process with the writer's pid created
                # after this cannot be the writer (the pid was reused).
                "time": time.time(),
            }
        )
        _fsync_dir(self.path.parent)

    def intent(self, seq: int, change: JournalChange) -> None:
        """Announce change ``seq``; on disk before the caller touches the kernel."""
        self._append({"op": "intent", "seq": seq, "change": change.to_json()})

    def done(self, seq: int) -> None:
        """Change ``seq`` is in the kernel."""
        self._append({"op": "done", "seq": seq})

    def preexisting(self, seq: int) -> None:
        """The kernel already held change ``seq``: it is not ours to remove."""
        self._append({"op": "preexisting", "seq": seq})

    def applied(self) -> None:
        """The whole plan is in place."""
        self._append({"op": "applied"})

    def read(self) -> JournalState:
        """Parse the journal (missing file: empty state)."""
        state = JournalState()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return state
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc.strerror}") from exc
        lines = text.split("\n")
        torn_tail = not text.endswith("\n")
        for lineno, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                rec = json.loads(line)
                op = rec["op"]
                if op == "begin":
                    state.device, state.netns, state.pid = rec["device"], rec["netns"], rec["pid"]
                    state.begun = rec.get("time")  # absent in journals before it was added
                elif op == "intent":
                    state.intents[int(rec["seq"])] = change_from_json(rec["change"])
                elif op == "done":
                    state.done.add(int(rec["seq"]))
                elif op == "preexisting":
                    state.preexisting.add(int(rec["seq"]))
                elif op == "applied":
                    state.applied = True
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (ValueError, KeyError, TypeError) as exc:
                if torn_tail and lineno == len(lines):
                    break  # crash inside write(): the change it announced was never made
                raise JournalError(
                    f"{self.path}:{lineno}: not a ztun journal line ({exc})"
                ) from exc
        return state

    def remove(self) -> None:
        """Delete the journal once everything it lists is undone."""
        self.path.unlink(missing_ok=True)
        if self.path.parent.exists():
            _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a create/unlink in ``path`` durable (the file's own fsync does not).

    Windows cannot open a directory as a file (no ``O_DIRECTORY``); NTFS journals its
    directory entries itself, so there is nothing to do there."""
    directory = getattr(os, "O_DIRECTORY", None)
    if directory is None:
        return
    fd = os.open(path, os.O_RDONLY | directory)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
