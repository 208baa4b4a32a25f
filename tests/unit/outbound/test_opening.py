"""Opening by callbacks (`ztun.outbound.opening`): the contract the engine's flow set-up
relies on, on 127.0.0.1 with real sockets and scripted proxies.

- `on_done` is called once, never from inside the call that started the opening;
- after `cancel()` it is never called, and what the opening made is closed (the proxy
  sees the connection end);
- an outbound without callbacks (direct) opens through the same call, by a Task;
- `until_done`, the coroutine face, cancels the opening when its awaiting task is
  cancelled;
- a failure is delivered, not raised out of the starting call, even one the kernel gives
  before the proxy is ever reached (no descriptor left: EMFILE), and it leaves nothing
  behind that reports again later (a timer, a health failure against the proxy);
- what `on_done` raises (a bug downstream) reaches the loop's exception handler: it is
  not swallowed by the dial that called it; a bug in a member's own bookkeeping costs
  that flow at once (delivered as its error), not a wait for the connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from test_outbound_adapters import LOOPBACK, REPLY_OK_ZERO_V4, TEST_NET, H, run, scripted_proxy

from tests.unit.loop_passes import loop_passes
from ztun.outbound import DirectOutbound, ProxyUnreachable, Socks5Outbound, Target, TcpStream
from ztun.outbound.dialer import ProxyDialer
from ztun.outbound.group import Member
from ztun.outbound.opening import start_tcp, until_done
from ztun.outbound.probe import HealthMonitor
from ztun.outbound.socks5_proto import Command, Socks5Client
from ztun.outbound.url import parse_proxy_url

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


class _MuteProxy:
    """A SOCKS5 proxy that reads the greeting and never answers; `ended` gets what it
    reads after that (b"": ztun closed its side)."""

    def __init__(self) -> None:
        self.greeted, self.closed = asyncio.Event(), asyncio.Event()
        self.ended: list[bytes] = []

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        self.greeted.set()
        self.ended.append(await reader.read())
        self.closed.set()


def test_cancel_closes_the_connection_to_the_proxy_and_reports_nothing() -> None:
    proxy = _MuteProxy()

    async def scenario() -> None:
        async with scripted_proxy(proxy.handler) as port:
            outcomes, _done, on_done = _collector()
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            opening = start_tcp(outbound, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
            await asyncio.wait_for(proxy.greeted.wait(), EVENT_TIMEOUT)
            opening.cancel()
            opening.cancel()  # idempotent
            await asyncio.wait_for(proxy.closed.wait(), EVENT_TIMEOUT)
            assert proxy.ended == [b""]
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
    proxy = _MuteProxy()

    async def scenario() -> None:
        async with scripted_proxy(proxy.handler) as port:
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            target = Target(TEST_NET, 80)
            task = asyncio.ensure_future(
                until_done(lambda on_done: outbound.start_tcp(target, on_done))
            )
            await asyncio.wait_for(proxy.greeted.wait(), EVENT_TIMEOUT)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("the task was not cancelled")
            await asyncio.wait_for(proxy.closed.wait(), EVENT_TIMEOUT)
            assert proxy.ended == [b""]

    run(scenario())


@contextlib.contextmanager
def _no_descriptor_left() -> Iterator[None]:
    """The next socket() fails with EMFILE, as it does for a ztun at its descriptor
    limit: the soft RLIMIT_NOFILE goes down to the lowest free descriptor number (those
    below it are all open) for the duration of the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_cancel_right_after_a_failure_found_at_once_still_silences_on_done() -> None:
    """A failure the dial finds inside its starting call waits for the next loop pass; a
    cancel() before that pass must still mean "never called" (the contract every layer
    above relies on)."""

    async def scenario() -> None:
        outcomes: list[tuple[object, BaseException | None]] = []
        # No such interface: making the socket fails inside the starting call.
        url = parse_proxy_url(f"socks5://{LOOPBACK}:9")
        dialer = ProxyDialer(url, bind_interface="ztun-none0")
        opening = dialer.start_handshake(
            lambda _sock: Socks5Client(Command.CONNECT, Target(TEST_NET, 80)),
            lambda _event: None,
            lambda result, exc: outcomes.append((result, exc)),
            protocol="SOCKS5",
        )
        assert outcomes == []
        opening.cancel()
        await loop_passes(3)
        assert outcomes == []

    run(scenario())


def test_no_descriptor_for_the_proxy_connection_is_delivered_once_and_not_held_against_it() -> None:
    """EMFILE making the socket to the proxy: the member's flow fails with it (the engine
    counts it as an outbound failure, as before), once, on a later pass; and nothing
    left armed reports a "connect timed out" later, which the member would count
    against a proxy that was never even tried."""

    async def scenario() -> None:
        url = parse_proxy_url(f"socks5://{LOOPBACK}:9")
        monitor = HealthMonitor(["p"])
        member = Member("p", url, Socks5Outbound(url, connect_timeout=0.2), monitor, udp=False)
        outcomes, done, on_done = _collector()
        raised: list[BaseException] = []
        with _no_descriptor_left():
            try:
                start_tcp(member, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
            except OSError as exc:
                raised.append(exc)
        assert raised == []  # delivered, not raised out of the starting call
        await asyncio.wait_for(done.wait(), EVENT_TIMEOUT)
        # Past the dial's own timer (0.2 s): asserting that nothing fires, so a wait.
        await asyncio.sleep(0.5)  # noqa: sleep-ok
        ((stream, exc),) = outcomes
        assert stream is None
        assert isinstance(exc, OSError) and exc.errno == errno.EMFILE
        (health,) = monitor.snapshot()
        assert health["failures"] == 0 and health["last_error"] is None

    run(scenario())


def _answers_then_awaits_close(
    closed: asyncio.Event,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A proxy that answers a no-auth CONNECT apart, then sets `closed` once ztun closed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        writer.write(H("0500"))
        await reader.readexactly(10)
        writer.write(REPLY_OK_ZERO_V4)
        await writer.drain()
        await reader.read()  # b"": ztun closed the connection
        writer.close()
        closed.set()

    return handler


def test_what_on_done_raises_reaches_the_loop_exception_handler() -> None:
    finished = asyncio.Event()
    handler = _answers_then_awaits_close(finished)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[BaseException | None] = []
        seen = asyncio.Event()

        def on_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            reported.append(context.get("exception"))
            seen.set()

        loop.set_exception_handler(on_error)
        streams: list[TcpStream] = []

        def on_done(stream: TcpStream | None, exc: BaseException | None) -> None:
            if stream is not None:
                streams.append(stream)
            raise RuntimeError("a bug downstream")

        async with scripted_proxy(handler) as port:
            outbound = Socks5Outbound(f"socks5://{LOOPBACK}:{port}")
            start_tcp(outbound, Target(TEST_NET, 80), on_done)
            await asyncio.wait_for(seen.wait(), EVENT_TIMEOUT)
            for stream in streams:
                stream.sock.close()
            await asyncio.wait_for(finished.wait(), EVENT_TIMEOUT)
        assert len(streams) == 1
        assert len(reported) == 1 and isinstance(reported[0], RuntimeError)

    run(scenario())


def test_a_bug_in_a_members_bookkeeping_fails_that_flow_at_once() -> None:
    """Before the callbacks, such a bug surfaced through the awaits and the engine reset
    the flow at once (internal_error); it must still reach `on_done` as the flow's error
    -- and the connection to the proxy be closed -- rather than vanish while the app
    waits for the connect timeout."""
    closed = asyncio.Event()
    handler = _answers_then_awaits_close(closed)

    async def scenario() -> None:
        async with scripted_proxy(handler) as port:
            url = parse_proxy_url(f"socks5://{LOOPBACK}:{port}")
            monitor = HealthMonitor(["p"])

            def broken(name: str) -> None:
                raise RuntimeError("a bug in the open-flow count")

            monitor.opened = broken  # type: ignore[method-assign]
            member = Member("p", url, Socks5Outbound(url), monitor, udp=False)
            outcomes, done, on_done = _collector()
            start_tcp(member, Target(TEST_NET, 80), on_done)  # type: ignore[arg-type]
            await asyncio.wait_for(done.wait(), EVENT_TIMEOUT)
            ((stream, exc),) = outcomes
            assert stream is None and isinstance(exc, RuntimeError)
            await asyncio.wait_for(closed.wait(), EVENT_TIMEOUT)

    run(scenario())
