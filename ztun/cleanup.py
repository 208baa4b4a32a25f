"""`ztun cleanup`: undo what a killed ztun (or `ztun demo`) left behind.

Route journals sit in the platform's state directory. On Linux they are named
`<device>_<netns inode>.journal`, so cleanup restores only the ones of the namespace it
runs in (run it there: `ip netns exec NAME ztun cleanup`); a journal whose namespace no
longer exists is stale (its routes died with it) and is removed; others are named, not
touched. Control sockets no ztun answers on are removed. Then the platform removes what
else it knows a killed run leaves (Linux: nftables tables, demo and bench namespaces).

One journal that cannot be restored (a change the system refuses to undo, a file that
is not a journal) does not stop the others: each is tried, the ones that failed are
named with why, stay on disk for another try, and the exit status is 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .platform import JournalScope, Platform, current

if TYPE_CHECKING:
    from .route import Journal
    from .route.model import RestoreReport


def say(text: str) -> None:
    print(f"ztun cleanup: {text}")


def undo_journal(platform: Platform, journal: Journal) -> tuple[RestoreReport | None, list[str]]:
    """Undo everything `journal` lists: the resolver first, then the routes (whose
    restore also undoes any resolver entry left; contracts.md, the platform seam). The
    second step runs even when the first failed. The routes' report (None when that
    step failed) and what failed, each as one line naming the step."""
    failed: list[str] = []
    # Any exception: an OS error of whatever kind (RouteError, JournalError, ChildFailed,
    # OSError, UnsupportedPlatform) must not keep the next step or journal from running.
    try:
        dns = platform.dns(journal)
        if dns is not None:
            dns.restore()
    except Exception as exc:
        failed.append(f"DNS: {exc}")
    report = None
    try:
        report = platform.routes(journal).restore()
    except Exception as exc:
        failed.append(f"routes: {exc}")
    return report, failed


def cleanup() -> int:
    """0 when everything found was undone or left alone on purpose; 1 when some journal
    could not be restored."""
    from .route import Journal

    platform = current()
    restored = 0
    failed: list[str] = []
    for path in sorted(platform.state_dir.glob("*.journal")):
        scope = platform.journal_scope(path)
        if scope is JournalScope.GONE:
            path.unlink(missing_ok=True)
            say(f"removed {path} (its network namespace is gone)")
            continue
        if scope is JournalScope.ELSEWHERE:
            say(f"{path} belongs to another network namespace; run `ztun cleanup` inside it")
            continue
        journal = Journal(path)
        running = platform.live_owner(journal)
        if running is not None:
            say(f"{path} belongs to ztun pid {running}, still running; left alone")
            continue
        report, errors = undo_journal(platform, journal)
        if errors:
            say(f"cannot restore {path}: {'; '.join(errors)}")
            failed.append(str(path))
            continue
        say(f"restored routes from {path}: {report}")
        restored += 1
    if platform.name != "windows":  # a named pipe dies with its process
        from .control.server import remove_if_stale

        for sock in sorted(platform.state_dir.glob("*.sock")):
            if remove_if_stale(str(sock)):
                say(f"removed {sock} (no ztun answers on it)")
    removed = platform.cleanup_extras(say)
    say(f"restored {restored} route journal(s), removed {removed} namespace(s)")
    if failed:
        say(f"not restored (left for another try): {', '.join(failed)}")
        return 1
    return 0
