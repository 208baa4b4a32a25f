"""Apply and undo a list of system changes under a journal: the part every OS shares.

An OS supplies a :class:`Changer` -- how to add one change and how to remove it -- and
these functions keep the journal's promise (see :mod:`ztun.route.journal`): each change
is on disk (fsynced) before it is made; a failure half-way undoes what was made; restore
walks the journal newest first, leaves what was there before us, treats "already gone"
as success, and deletes the journal only when every entry was handled.

Routes and resolver settings share one journal per device (the platform seam hands the
same journal to its route and DNS appliers): the DNS applier appends after the routes,
its restore undoes the resolver entries (and removes the file only when it held nothing
else), and the routes' restore then undoes everything left, resolver entries included
(already undone: counted absent), so ``ztun cleanup`` after a crash restores both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ztun.route.journal import Journal
from ztun.route.model import JournalChange, RestoreReport, RouteError

log = logging.getLogger(__name__)

ProgressHook = Callable[[int, JournalChange], None]


class Changer(Protocol):
    """One OS's way of making and unmaking a journaled change."""

    def add(self, change: JournalChange) -> bool:
        """Make ``change``; False when the system already had it (not ours to remove).
        Raises RouteError naming the change on failure."""
        ...

    def remove(self, change: JournalChange) -> bool:
        """Undo ``change`` if the system holds exactly it; False when already gone (or
        replaced by something that is not ours). Raises RouteError on failure."""
        ...


def append_changes(
    changes: Sequence[JournalChange],
    journal: Journal,
    device: str,
    changer: Changer,
    *,
    netns: str | None = None,
    fresh: bool = False,
    progress: ProgressHook | None = None,
) -> None:
    """Journal and make ``changes`` in order, after whatever the journal already holds
    (a journal with no changes yet is begun for ``device`` in ``netns``; with ``fresh``
    it is always begun, which refuses one still listing changes: the applier that
    starts a run's journal).

    On any failure everything the journal lists is undone (the earlier appliers' changes
    too: a run that cannot set up fully starts from a clean system) and the error is
    raised.  ``progress(seq, change)`` is called after each change is made."""
    state = journal.read()
    if fresh or not state.intents:
        journal.begin(device, netns)  # JournalError when it still lists changes
    first = max(state.intents, default=-1) + 1
    try:
        for seq, change in enumerate(changes, start=first):
            journal.intent(seq, change)
            if changer.add(change):
                journal.done(seq)
            else:
                log.warning("already present, leaving it: %s", change.describe())
                journal.preexisting(seq)
            log.debug("made: %s", change.describe())
            if progress is not None:
                progress(seq, change)
        journal.applied()
    except BaseException:
        try:
            restore_changes(journal, changer)
        except Exception:  # the original error matters more; the journal stays for cleanup
            log.exception("rollback failed; run `ztun cleanup`")
        raise


def restore_changes(
    journal: Journal, changer: Changer, *, only: type[JournalChange] | None = None
) -> RestoreReport:
    """Undo everything ``journal`` lists, newest first; idempotent (see module doc).

    ``only``: undo just the changes of that kind (the DNS applier's restore, which runs
    before the routes'); the file stays unless it held nothing else."""
    state = journal.read()
    report = RestoreReport(kept=len(state.preexisting))
    for _seq, change in state.to_undo():
        if only is not None and not isinstance(change, only):
            continue
        try:
            if changer.remove(change):
                report.removed += 1
                log.debug("undone: %s", change.describe())
            else:
                report.absent += 1
        except (RouteError, OSError) as exc:  # the next entries are still tried
            report.errors.append(str(exc))
    if report.errors:
        raise RouteError(
            f"restore from {journal.path} left {len(report.errors)} entries: "
            + "; ".join(report.errors)
        )
    if only is None or all(isinstance(c, only) for c in state.intents.values()):
        journal.remove()
    return report


def recover_changes(journal: Journal, changer: Changer) -> RestoreReport | None:
    """At start-up: undo what a killed run left (None when there is no journal)."""
    if not journal.exists():
        return None
    report = restore_changes(journal, changer)
    log.warning(
        "restored system changes left by an earlier run (%d removed, %d already gone)",
        report.removed,
        report.absent,
    )
    return report
