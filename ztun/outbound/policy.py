"""How a group orders its members for a new flow, sans-IO (docs/contracts.md section 2).

`candidates` returns the members that are up, in the order to try them: the first is
used and, if it fails, the second gets the one retry. `turn` counts the group's picks
(round-robin starts each flow one member further along).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ztun.rules.proxies import Policy

__all__ = ["Policy", "candidates"]


def candidates(
    policy: Policy,
    members: Sequence[str],
    *,
    is_up: Callable[[str], bool],
    active: Callable[[str], int],
    turn: int = 0,
) -> list[str]:
    """The up members of `members` (priority order) in the order `policy` tries them."""
    up = [m for m in members if is_up(m)]
    if not up:
        return []
    if policy is Policy.ROUND_ROBIN:
        # Rotate the up members: with one down, the others share its turns evenly
        # (rotating the full list would hand every turn of the down one to its successor).
        start = turn % len(up)
        return [*up[start:], *up[:start]]
    if policy is Policy.LEAST_CONNECTIONS:
        # sorted() is stable: ties go to the member listed first.
        return sorted(up, key=active)
    return up
