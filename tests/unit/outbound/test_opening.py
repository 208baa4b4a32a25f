"""Opening by callbacks (`ztun.outbound.opening`): the contract the engine's flow set-up
relies on, on 127.0.0.1 with real sockets and scripted proxies.

- `on_done` is called once, never from inside the call that started the opening;
- after `cancel()` it is never called, and what the opening made is closed (the proxy
  sees the connection end);
- an outbound without callbacks (direct) opens through the same call, by a Task;
- `until_done`, the coroutine face, cancels the opening when its awaiting task is
  cancelled.
"""

from __future__ import annotations

import asyncio
import socket

from test_outbound_adapters import LOOPBACK, REPLY_OK_ZERO_V4, TEST_NET, H, run, scripted_proxy

from ztun.outbound import DirectOutbound, ProxyUnreachable, Socks5Outbound, Target, TcpStream
from ztun.outbound.opening import start_tcp, until_done

EVENT_TIMEOUT = 5.0

Outcome = tuple[TcpStream | None, BaseException | None]


def _collector() -> tuple[list[Outcome], asyncio.Event, object]:
    outcomes: list[Outcome] = []
    done = asyncio.Event()

    def on_done(stream: TcpStream | None, exc: BaseException | None) -> None:
        outcomes.append((stream, exc))
        done.set()

    return outcomes, done, on_done


def test_socks5_start_tcp_delivers_the_stream_by_callback_after_the_call() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(3) == H("050100")
        writer.write(H("0500"))
        assert await reader.readexactly(10) == H("05 01 00 01 c0000209 0050")
        writer.write(REPLY_OK_ZERO_V4 + b"early")
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outcomes, done, on_done = _collector()
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            start_tcp(outbound, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
            assert outcomes == []  # never from inside the call
            await asyncio.wait_for(done.wait(), EVENT_TIMEOUT)
            ((stream, exc),) = outcomes
            assert exc is None and stream is not None
            with stream.sock:
                assert stream.early == b"early"
                assert stream.sock.getblocking() is False

    run(scenario())


def test_a_failure_found_at_once_is_delivered_on_a_later_loop_pass() -> None:
    async def scenario() -> None:
        # A port nothing listens on: the connect is refused, maybe within connect() itself.
        probe = socket.socket()
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
        probe.close()
        outcomes, done, on_done = _collector()
        outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
        start_tcp(outbound, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
        assert outcomes == []
        await asyncio.wait_for(done.wait(), EVENT_TIMEOUT)
        ((stream, exc),) = outcomes
        assert stream is None
        assert isinstance(exc, ProxyUnreachable) and exc.refused

    run(scenario())


def test_cancel_closes_the_connection_to_the_proxy_and_reports_nothing() -> None:
    greeted, closed = asyncio.Event(), asyncio.Event()
    ended: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        greeted.set()  # and never answer
        ended.append(await reader.read())  # b"": ztun closed its side
        closed.set()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outcomes, _done, on_done = _collector()
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            opening = start_tcp(outbound, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
            await asyncio.wait_for(greeted.wait(), EVENT_TIMEOUT)
            opening.cancel()
            opening.cancel()  # idempotent
            await asyncio.wait_for(closed.wait(), EVENT_TIMEOUT)
            assert ended == [b""]
            assert outcomes == []

    run(scenario())


def test_an_outbound_without_callbacks_opens_through_a_task() -> None:
    async def scenario() -> None:
        accepted = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()

        server = await asyncio.start_server(serve, LOOPBACK, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            outcomes, done, on_done = _collector()
            start_tcp(DirectOutbound(), Target(LOOPBACK, port), on_done)  # type: ignore[arg-type]
            assert outcomes == []
            await asyncio.wait_for(done.wait(), EVENT_TIMEOUT)
            ((stream, exc),) = outcomes
            assert exc is None and stream is not None
            stream.sock.close()
            await asyncio.wait_for(accepted.wait(), EVENT_TIMEOUT)
        finally:
            server.close()

    run(scenario())


def test_until_done_cancels_the_opening_with_its_task() -> None:
    greeted, closed = asyncio.Event(), asyncio.Event()
    ended: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        greeted.set()
        ended.append(await reader.read())
        closed.set()

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            target = Target(TEST_NET, 80)
            task = asyncio.ensure_future(
                until_done(lambda on_done: outbound.start_tcp(target, on_done))
            )
            await asyncio.wait_for(greeted.wait(), EVENT_TIMEOUT)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("the task was not cancelled")
            await asyncio.wait_for(closed.wait(), EVENT_TIMEOUT)
            assert ended == [b""]

    run(scenario())
