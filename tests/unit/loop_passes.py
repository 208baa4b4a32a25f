"""Waiting for the event loop itself: what unit tests of loop-callback code await."""

from __future__ import annotations

import asyncio


async def loop_passes(count: int) -> None:
    """Let the loop run `count` passes (what was scheduled with call_soon has run; a Task
    created before has taken its first step)."""
    loop = asyncio.get_running_loop()
    passed = loop.create_future()

    def step(left: int) -> None:
        if left:
            loop.call_soon(step, left - 1)
        else:
            passed.set_result(None)

    step(count)
    await passed
