"""Helper threads must not swallow SIGTERM: Python handles signals in the main thread
only, so the harness starts its threads with the stop signals blocked."""

from __future__ import annotations

import signal
import threading

from harness.proc import STOP_SIGNALS, start_thread_without_signals


def _blocked_mask() -> int:
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def _has(mask: int, sig: signal.Signals) -> bool:
    return bool(mask >> (sig - 1) & 1)


def test_the_thread_blocks_stop_signals_and_the_caller_does_not() -> None:
    before = _blocked_mask()
    seen: dict[str, int] = {}
    thread = threading.Thread(target=lambda: seen.update(mask=_blocked_mask()))
    start_thread_without_signals(thread)
    thread.join(10)
    assert all(_has(seen["mask"], sig) for sig in STOP_SIGNALS), hex(seen["mask"])
    assert _blocked_mask() == before, "the caller's mask must be restored"
    assert not _has(before, signal.SIGTERM)
