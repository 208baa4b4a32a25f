"""The crash journal: durable intent records, torn tails, refusal to overwrite."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from ztun.route import (
    Journal,
    JournalError,
    PolicyRule,
    TableRoute,
    default_journal_path,
)
from ztun.route.model import RestoreReport

RULE = PolicyRule(family=socket.AF_INET, priority=9000, table=254, suppress_prefixlength=0)
ROUTE = TableRoute(family=socket.AF_INET6, table=2022, dst="::/0", device="ztun0")


def test_round_trip_and_undo_order(tmp_path: Path) -> None:
    j = Journal(tmp_path / "ztun0.journal")
    j.begin("ztun0", "ns1")
    j.intent(0, ROUTE)
    j.done(0)
    j.intent(1, RULE)
    j.preexisting(1)
    j.intent(2, RULE.__class__(family=socket.AF_INET6, priority=9000, table=254))
    j.applied()
    state = j.read()
    assert (state.device, state.netns) == ("ztun0", "ns1")
    assert state.applied and state.done == {0} and state.preexisting == {1}
    # newest first, the pre-existing rule is not ours to remove
    assert [seq for seq, _ in state.to_undo()] == [2, 0]
    assert state.intents[0] == ROUTE


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.begin("t", None)
    j.intent(0, ROUTE)
    with open(j.path, "a") as f:
        f.write('{"op":"intent","seq":1,"change":{"kind":"ru')
    state = j.read()
    assert list(state.intents) == [0]


def test_garbage_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text(
        '{"op":"begin","device":"t","netns":null,"pid":1}\nnot json\n{"op":"applied"}\n'
    )
    with pytest.raises(JournalError, match=r"j:2: not a ztun journal line"):
        Journal(path).read()


def test_begin_refuses_a_journal_that_still_needs_restore(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.begin("t", None)
    j.intent(0, ROUTE)
    with pytest.raises(JournalError, match="restore it first"):
        Journal(j.path).begin("t", None)
    j.remove()
    assert not j.exists()
    Journal(j.path).begin("t", None)  # a clean start is fine


def test_begin_creates_the_run_directory(tmp_path: Path) -> None:
    j = Journal(tmp_path / "run" / "ztun" / "x.journal")
    j.begin("x", None)
    assert j.path.stat().st_mode & 0o777 == 0o600


def test_missing_journal_reads_empty(tmp_path: Path) -> None:
    assert not Journal(tmp_path / "none").read().intents


def test_default_path_is_safe_for_any_device_name() -> None:
    assert str(default_journal_path("ztun0")) == "/run/ztun/ztun0.journal"
    assert default_journal_path("../evil", Path("/r")) == Path("/r/.._evil.journal")


def test_linux_applier_refuses_an_event_loop_thread(tmp_path: Path) -> None:
    """pyroute2's sync API would fail obscurely inside a running loop; we say what to do."""
    from ztun.route.linux import restore

    j = Journal(tmp_path / "j")
    j.begin("t", None)
    j.intent(0, ROUTE)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"asyncio\.to_thread"):
            restore(j)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("report", "said"),
    [
        (RestoreReport(removed=7), "removed 7 changes ztun made"),
        (RestoreReport(removed=1, absent=2), "removed 1 change ztun made, 2 already gone"),
        (
            RestoreReport(kept=1, errors=["ip rule del: EPERM"]),
            "removed 0 changes ztun made, kept 1 entry the system already had, "
            "1 failed: ip rule del: EPERM",
        ),
        (
            RestoreReport(removed=2, kept=3),
            "removed 2 changes ztun made, kept 3 entries the system already had",
        ),
    ],
)
def test_a_restore_report_reads_as_a_sentence(report: RestoreReport, said: str) -> None:
    """The exit log ("auto-route restored: ...") and `ztun cleanup` print it; they
    printed the dataclass repr, RestoreReport(removed=7, absent=0, ...)."""
    assert str(report) == said
