"""The helpers ztun and the harness share (ztun.proc.poll_until, ztun.netns.in_fresh_thread):
no root, no namespace -- what they promise about results, deadlines and threads."""

from __future__ import annotations

import threading
import time

import pytest

from ztun.netns import in_fresh_thread
from ztun.proc import POLL_MAX, ProcError, await_condition, poll_until


def test_poll_until_true_once_the_condition_holds() -> None:
    calls = iter([False, False, True])
    assert poll_until(lambda: next(calls), timeout=5.0)


def test_poll_until_false_at_the_deadline_and_never_much_later() -> None:
    start = time.monotonic()
    assert not poll_until(lambda: False, timeout=0.05)
    assert time.monotonic() - start < 0.05 + POLL_MAX + 0.5  # bounded, not a hang


def test_poll_until_stops_at_once_when_told() -> None:
    start = time.monotonic()
    assert not poll_until(lambda: False, timeout=30.0, stop=lambda: True)
    assert time.monotonic() - start < 1.0


def test_await_condition_says_why_it_gave_up() -> None:
    with pytest.raises(ProcError, match=r"the server: exited with 3"):
        await_condition(lambda: False, 30.0, "the server", abort=lambda: "exited with 3")
    with pytest.raises(ProcError, match=r"timed out after 0.01s waiting for the link"):
        await_condition(lambda: False, 0.01, "the link")


def test_in_fresh_thread_returns_raises_and_ends() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert in_fresh_thread(work) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(KeyError, match="inside"):
        in_fresh_thread(lambda: {}["inside"])
    started: list[threading.Thread] = []

    def start(thread: threading.Thread) -> None:
        started.append(thread)
        thread.start()

    assert in_fresh_thread(lambda: "ok", start=start) == "ok"
    assert len(started) == 1
