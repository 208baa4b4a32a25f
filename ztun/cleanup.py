"""`ztun cleanup`: undo what a killed ztun (or `ztun demo`) left behind.

Route journals sit in the platform's state directory. On Linux they are named
`<device>_<netns inode>.journal`, so cleanup restores only the ones of the namespace it
runs in (run it there: `ip netns exec NAME ztun cleanup`); a journal whose namespace no
longer exists is stale (its routes died with it) and is removed; others are named, not
touched. Control sockets no ztun answers on are removed. Then the platform removes what
else it knows a killed run leaves (Linux: nftables tables, demo and bench namespaces).
"""

from __future__ import annotations

from .platform import JournalScope, current


def say(text: str) -> None:
    print(f"ztun cleanup: {text}")


def cleanup() -> int:
    from .route import Journal

    platform = current()
    restored = 0
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
        dns = platform.dns(journal)
        if dns is not None:
            dns.restore()
        report = platform.routes(journal).restore()
        say(f"restored routes from {path}: {report}")
        restored += 1
    if platform.name != "windows":  # a named pipe dies with its process
        from .control.server import remove_if_stale

        for sock in sorted(platform.state_dir.glob("*.sock")):
            if remove_if_stale(str(sock)):
                say(f"removed {sock} (no ztun answers on it)")
    removed = platform.cleanup_extras(say)
    say(f"restored {restored} route journal(s), removed {removed} namespace(s)")
    return 0
