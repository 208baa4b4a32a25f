"""DeferStack: undo in reverse, every undo runs, errors reported together (no root)."""

from __future__ import annotations

import pytest

from harness.defer import DeferStack, TeardownError


def test_runs_in_reverse_order() -> None:
    order: list[int] = []
    with DeferStack() as stack:
        for i in range(3):
            stack.defer(lambda i=i: order.append(i), f"step {i}")
    assert order == [2, 1, 0]


def test_every_undo_runs_despite_errors() -> None:
    order: list[str] = []
    stack = DeferStack()
    stack.defer(lambda: order.append("first"), "first")
    stack.defer(lambda: 1 / 0, "divide")
    stack.defer(lambda: order.append("last"), "last")
    with pytest.raises(TeardownError, match="divide: ZeroDivisionError"):
        stack.close()
    assert order == ["last", "first"]
    stack.close()  # idempotent: nothing left
    assert len(stack) == 0


def test_interrupt_during_teardown_is_held_until_the_rest_ran() -> None:
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    stack = DeferStack()
    stack.defer(lambda: ran.append("namespace removed"), "ns")
    stack.defer(interrupt, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        stack.close()
    assert ran == ["namespace removed"]
