"""Fixtures for the harness's own unit tests.

In-process servers run on an asyncio loop in a background thread, bound to 127.0.0.1, so
blocking test clients can talk to them without root. Tests that need namespaces use the
plugin's ``topology`` fixture (client/proxy/server) and ``rng`` (seeded per test).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.peers.recording import EventLog, ProxyFaults, RecordingServer
from harness.peers.targets import serve_tcp_data, serve_tcp_echo, serve_udp_echo

T = TypeVar("T")
LOOP_CALL_TIMEOUT = 15.0
LOOPBACK = "127.0.0.1"


class LoopThread:
    """An event loop in a daemon thread; ``run`` submits a coroutine and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = LOOP_CALL_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(LOOP_CALL_TIMEOUT)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@dataclass
class Targets:
    tcp_echo: tuple[str, int]
    tcp_data: tuple[str, int]
    udp_echo: tuple[str, int]


@pytest.fixture
def targets(loop_thread: LoopThread) -> Iterator[Targets]:
    async def start() -> tuple[Any, Any, Any]:
        return (
            await serve_tcp_echo(LOOPBACK, 0),
            await serve_tcp_data(LOOPBACK, 0),
            await serve_udp_echo(LOOPBACK, 0),
        )

    echo, data, udp = loop_thread.run(start())
    yield Targets(
        tcp_echo=(LOOPBACK, echo.sockets[0].getsockname()[1]),
        tcp_data=(LOOPBACK, data.sockets[0].getsockname()[1]),
        udp_echo=(LOOPBACK, udp.get_extra_info("sockname")[1]),
    )

    async def stop() -> None:
        echo.close()
        data.close()
        udp.close()

    loop_thread.run(stop())


@pytest.fixture
def make_proxy(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Any]:
    """Factory: ``make_proxy(faults=[...], username=..., password=...)`` -> started server."""
    servers: list[RecordingServer] = []

    def make(
        *, faults: list[str] | None = None, host: str = LOOPBACK, **kwargs: Any
    ) -> RecordingServer:
        log = EventLog(tmp_path / f"socks-{len(servers)}.jsonl")
        server = RecordingServer(host, 0, log=log, faults=ProxyFaults.parse(faults or []), **kwargs)
        loop_thread.run(server.start())
        servers.append(server)
        return server

    yield make
    for server in servers:
        loop_thread.run(server.close())
        server.log.close()
