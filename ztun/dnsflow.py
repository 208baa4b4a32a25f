"""The asyncio side of ztun.dns: DNS queries caught on the TUN, answered or forwarded.

Queries to port 53 never take the UDP association path: the sans-IO `DnsHandler`
answers them (fake-ip, cache) or asks for an upstream exchange, which goes as DNS over
TCP (RFC 7766 framing) through the same outbound as other TCP -- so resolution happens
on the proxy's side of the world and nothing leaks around the tunnel. Under fake-ip an
app's own DNS over TCP to port 53 is answered the same way (`TcpDnsClient`): through
the proxy its resolver would hand it real addresses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable

from .dns import (
    UPSTREAM_TIMEOUT,
    Answer,
    DnsHandler,
    DnsMode,
    Drop,
    Forward,
    TcpDnsDeframer,
    frame,
)
from .outbound import Outbound, OutboundError, Target
from .stack import UdpDatagram

log = logging.getLogger("ztun")

UPSTREAM_READ = 4096
#: An idle app DNS-over-TCP connection is closed after this long (RFC 7766 6.2.3: the
#: server may close idle connections; clients reconnect).
TCP_IDLE_TIMEOUT = 10.0
Reply = Callable[[UdpDatagram, bytes], None]
#: Where one query's answer goes: back to its datagram, or onto its TCP connection.
Respond = Callable[[bytes], None]


class DnsService:
    def __init__(
        self, handler: DnsHandler, outbound: Outbound, reply: Reply, stats: Counter[str]
    ) -> None:
        self.handler = handler
        self.outbound = outbound
        self.reply = reply
        self.stats = stats
        self._waiting: dict[int, Respond] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def tcp_upstream(self) -> tuple[str, int] | None:
        """The resolver an app's DNS over TCP (port 53) must reach instead of the server
        it named: under ``--dns remote`` the upstream, as for its UDP queries -- a client
        retries over TCP after a truncated (TC=1) answer (RFC 1035 4.2.1, RFC 7766 5),
        and the address it asked over UDP may answer nothing. None: the app's own server
        (hijack; fake-ip answers it itself: `answers_tcp`)."""
        return self.handler.upstream if self.handler.mode is DnsMode.REMOTE else None

    @property
    def answers_tcp(self) -> bool:
        """Whether ztun answers an app's DNS over TCP to port 53 itself (`serve_tcp`):
        under fake-ip, whose answers the resolver the app named cannot give."""
        return self.handler.mode is DnsMode.FAKE_IP

    def on_query(self, datagram: UdpDatagram, now: float) -> None:
        server = (str(ipaddress.ip_address(datagram.dst_addr)), datagram.dst_port)
        respond = functools.partial(self.reply, datagram)
        self.query(datagram.payload, now, respond, server, tcp=False)

    def query(
        self, payload: bytes, now: float, respond: Respond, server: tuple[str, int], *, tcp: bool
    ) -> bool:
        """One query the app sent to `server` (over TCP: `tcp`): `respond` gets its answer,
        now or once the upstream replied. False: dropped, no answer will come."""
        result = self.handler.handle_query(payload, now, tcp=tcp)
        if isinstance(result, Answer):
            self.stats["dns_answered_locally"] += 1
            respond(result.payload)
        elif isinstance(result, Drop):
            self.stats["dns_dropped"] += 1
            log.debug("DNS query dropped: %s", result.reason)
            return False
        elif isinstance(result, Forward):
            self.stats["dns_forwarded"] += 1
            self._waiting[result.upstream_id] = respond
            task = asyncio.get_running_loop().create_task(self._exchange(result, server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    def serve_tcp(
        self,
        conn: socket.socket,
        server: tuple[str, int],
        on_done: Callable[[asyncio.Task[None]], None],
    ) -> tuple[TcpDnsClient, asyncio.Task[None]]:
        """Answer an app's DNS over TCP on `conn` (accepted from the TUN, sent to
        `server`) in a task that `close` cancels; `on_done(task)` when it ends."""
        client = TcpDnsClient(self, conn, server)
        task = asyncio.get_running_loop().create_task(client.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(on_done)
        return client, task

    async def _exchange(self, fwd: Forward, server: tuple[str, int]) -> None:
        host, port = fwd.server or server
        loop = asyncio.get_running_loop()
        try:
            stream = await self.outbound.open_tcp(Target(host, port))
        except (OutboundError, OSError) as exc:
            log.warning("DNS upstream %s:%d unreachable: %s", host, port, exc)
            self._fail(fwd.upstream_id)
            return
        sock = stream.sock
        messages: list[bytes] = []
        try:
            # Bounded: an upstream that accepts and never answers must not hold a proxy
            # connection (the app has had its SERVFAIL from the handler's timer by then).
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                await loop.sock_sendall(sock, fwd.wire)  # already length-framed (RFC 7766)
                deframer = TcpDnsDeframer()
                messages = deframer.feed(stream.early)
                while not messages:
                    data = await loop.sock_recv(sock, UPSTREAM_READ)
                    if not data:
                        break
                    messages = deframer.feed(data)
        except (OSError, TimeoutError) as exc:
            log.warning("DNS upstream %s:%d failed: %s", host, port, exc or "timed out")
        except ValueError as exc:  # the deframer: a frame length of 0 (RFC 7766 has 1..)
            # In hijack mode the upstream is wherever the app sent its query: its bytes
            # are input like a packet's, counted and dropped, and the query fails now.
            self.stats["dns_upstream_malformed"] += 1
            log.warning("DNS upstream %s:%d sent a malformed stream: %s", host, port, exc)
        finally:
            sock.close()
            stream.release()  # the proxy's open-flow count
        for message in messages:
            matched = self.handler.handle_reply(message, loop.time())
            if matched is not None:
                waiting = self._waiting.pop(matched[0].upstream_id, None)
                if waiting is not None:
                    waiting(matched[1])
        if fwd.upstream_id in self._waiting:
            self._fail(fwd.upstream_id)

    def _fail(self, upstream_id: int) -> None:
        failed = self.handler.fail(upstream_id)
        waiting = self._waiting.pop(upstream_id, None)
        if failed is not None and waiting is not None:
            self.stats["dns_servfail"] += 1
            waiting(failed[1])

    def on_timer(self, now: float) -> None:
        for fwd, answer in self.handler.expire(now):
            waiting = self._waiting.pop(fwd.upstream_id, None)
            if waiting is not None:
                self.stats["dns_servfail"] += 1
                waiting(answer)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class TcpDnsClient:
    """One app connection of DNS over TCP (RFC 7766) answered by `DnsService.query`, as
    its UDP queries are: messages cut from the stream, answers framed back in the order
    they are ready (RFC 7766 7: a client matches them by ID). Ends at the app's close
    once every answer was written (within UPSTREAM_TIMEOUT: a forwarded one is bounded
    by it too), after TCP_IDLE_TIMEOUT without a query (TimeoutError), or on a
    malformed stream (counted)."""

    def __init__(self, service: DnsService, conn: socket.socket, server: tuple[str, int]) -> None:
        self.service = service
        self.conn = conn
        self.server = server
        self.bytes_up = 0
        self.bytes_down = 0
        self.half_closed = False
        self._answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._unanswered = 0  # queries whose answer is not written yet
        self._answered = asyncio.Event()  # ... none (or the app stopped taking them)
        self._answered.set()

    def _respond(self, answer: bytes) -> None:
        self._answers.put_nowait(frame(answer))

    async def run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._write())
        try:
            await self._read()
            self.half_closed = True
            async with asyncio.timeout(UPSTREAM_TIMEOUT + 1.0):
                await self._answered.wait()
        finally:
            writer.cancel()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        deframer = TcpDnsDeframer()
        while True:
            async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                data = await loop.sock_recv(self.conn, UPSTREAM_READ)
            if not data:
                return
            self.bytes_up += len(data)
            try:
                messages = deframer.feed(data)
            except ValueError as exc:  # a frame length of 0: input like a packet's
                self.service.stats["dns_tcp_malformed"] += 1
                log.debug("DNS over TCP from the app: %s", exc)
                return
            for message in messages:
                if self.service.query(message, loop.time(), self._respond, self.server, tcp=True):
                    self._unanswered += 1
                    self._answered.clear()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self._answers.get()
                await loop.sock_sendall(self.conn, data)
                self.bytes_down += len(data)
                self._unanswered -= 1
                if not self._unanswered:
                    self._answered.set()
        except OSError as exc:  # the app reset: nothing more reaches it
            log.debug("DNS over TCP to the app: %s", exc)
            self._answered.set()
