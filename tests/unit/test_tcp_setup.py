"""A TCP flow in set-up (`ztun.engine._TcpSetup`) and its hand-over to the relay, on
127.0.0.1 with real sockets, no TUN (the flow is handed to the set-up as a redirected
connection is: no NAT session).

`ztun close` (or `ztun stop`) during the sniff must reset the app and end the flow as
"closed", and nothing else: no outbound failure counted, no error logged, and the app's
socket closed only after the sniff stopped watching it -- a descriptor closed under a
registered reader stays in the loop's selector, where a later socket given the same
number would never be watched. A relay that cannot start must cost its flow only: both
sides reset, the flow ended, the proxy's count released.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from tests.unit.loop_passes import loop_passes
from ztun.engine import Engine, _TcpSetup
from ztun.outbound import DirectOutbound
from ztun.outbound.base import TcpStream
from ztun.router import Router
from ztun.stack import SystemStack

pytestmark = pytest.mark.linux  # the hairpin network below is on loopback: Linux's 127/8

INET4 = ipaddress.IPv4Interface("127.19.0.5/30")
TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def app_flow(
    router: Router,
) -> AsyncIterator[tuple[Engine, _TcpSetup, socket.socket]]:
    """An engine and the set-up of one app connection on loopback; the app's socket."""
    tun, other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # never used
    listener = socket.create_server(("127.0.0.1", 0))
    app = socket.create_connection(listener.getsockname())
    app.setblocking(False)
    conn, peer = listener.accept()
    conn.setblocking(False)
    listener.close()
    engine = Engine(tun, SystemStack(inet4=INET4, inet6=None), router, splice=False)
    try:
        setup = _TcpSetup(engine, conn, ipaddress.ip_address("192.0.2.9"), 443, peer, None)
        yield engine, setup, app
    finally:
        app.close()
        tun.close()
        other_end.close()


async def reset_seen(app: socket.socket) -> BaseException | None:
    """What the app reads next: the reset, or None for anything else."""
    async with asyncio.timeout(TIMEOUT):
        try:
            await asyncio.get_running_loop().sock_recv(app, 100)
        except ConnectionResetError as exc:
            return exc
    return None


def direct_router(**options: float) -> Router:
    direct = DirectOutbound()
    return Router(outbounds={"default": direct, "direct": direct}, **options)


async def close_during_sniff() -> tuple[Engine, _TcpSetup, bool, BaseException | None]:
    # The app sends nothing: the sniff waits for its first bytes until the flow is closed.
    async with app_flow(direct_router(sniff_timeout=TIMEOUT)) as (engine, setup, app):
        setup.begin()
        sniffing = setup.task
        assert sniffing is not None
        fd = setup.conn.fileno()
        await loop_passes(2)  # the sniff's first step: it watches the app's socket now
        assert engine.flows.close(setup.record.id)  # what `ztun close ID` does
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait([sniffing])
        reset = await reset_seen(app)
        left_in_selector = asyncio.get_running_loop().remove_reader(fd)
        return engine, setup, left_in_selector, reset


def test_a_flow_closed_while_sniffed_is_reset_and_counted_as_closed_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ztun"):
        engine, setup, left_in_selector, reset = asyncio.run(close_during_sniff())
    assert isinstance(reset, ConnectionResetError)  # the app got a reset
    assert setup.record.reason == "closed" and len(engine.flows) == 0
    for counter in ("tcp_outbound_failed", "tcp_internal_error", "tcp_rejected"):
        assert engine.stats[counter] == 0, counter
    assert not left_in_selector  # the closed socket's number was not left watched
    assert [r.getMessage() for r in caplog.records] == []


async def relay_that_cannot_start() -> tuple[Engine, list[str], BaseException | None, int]:
    async with app_flow(direct_router()) as (engine, setup, app):
        released: list[str] = []
        remote = socket.socket()
        remote.close()  # what the outbound hands over is no socket any more: add_reader refuses it
        stream = TcpStream(remote, on_release=lambda: released.append("released"))
        engine._relay_tcp(setup, stream)
        return engine, released, await reset_seen(app), len(engine.relays)


def test_a_relay_that_cannot_start_resets_the_app_and_ends_the_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="ztun"):
        engine, released, reset, relays_left = asyncio.run(relay_that_cannot_start())
    assert isinstance(reset, ConnectionResetError)  # the app is told at once, not left hanging
    assert released == ["released"]  # the proxy's open-flow count goes back down, once
    assert relays_left == 0
    assert not engine.flows.select()  # the flow is over (no record left behind)
    assert engine.stats["tcp_internal_error"] == 1
    assert "the relay did not start" in caplog.text
