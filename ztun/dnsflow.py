"""The asyncio side of ztun.dns: DNS queries caught on the TUN, answered or forwarded.

Queries to port 53 never take the UDP association path: the sans-IO `DnsHandler`
answers them (fake-ip, cache) or asks for an upstream exchange, which goes as DNS over
TCP (RFC 7766 framing) through the same outbound as other TCP -- so resolution happens
on the proxy's side of the world and nothing leaks around the tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable

from .dns import UPSTREAM_TIMEOUT, Answer, DnsHandler, DnsMode, Drop, Forward, TcpDnsDeframer
from .outbound import Outbound, OutboundError, Target
from .stack import UdpDatagram

log = logging.getLogger("ztun")

UPSTREAM_READ = 4096
Reply = Callable[[UdpDatagram, bytes], None]


class DnsService:
    def __init__(
        self, handler: DnsHandler, outbound: Outbound, reply: Reply, stats: Counter[str]
    ) -> None:
        self.handler = handler
        self.outbound = outbound
        self.reply = reply
        self.stats = stats
        self._waiting: dict[int, UdpDatagram] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def tcp_upstream(self) -> tuple[str, int] | None:
        """The resolver an app's DNS over TCP (port 53) must reach instead of the server
        it named: under ``--dns remote`` the upstream, as for its UDP queries -- a client
        retries over TCP after a truncated (TC=1) answer (RFC 1035 4.2.1, RFC 7766 5),
        and the address it asked over UDP may answer nothing. None: the app's own server
        (hijack, fake-ip)."""
        return self.handler.upstream if self.handler.mode is DnsMode.REMOTE else None

    def on_query(self, datagram: UdpDatagram, now: float) -> None:
        result = self.handler.handle_query(datagram.payload, now)
        if isinstance(result, Answer):
            self.stats["dns_answered_locally"] += 1
            self.reply(datagram, result.payload)
        elif isinstance(result, Drop):
            self.stats["dns_dropped"] += 1
            log.debug("DNS query dropped: %s", result.reason)
        elif isinstance(result, Forward):
            self.stats["dns_forwarded"] += 1
            self._waiting[result.upstream_id] = datagram
            task = asyncio.get_running_loop().create_task(self._exchange(result, datagram))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _exchange(self, fwd: Forward, datagram: UdpDatagram) -> None:
        host, port = fwd.server or (str(ipaddress.ip_address(datagram.dst_addr)), datagram.dst_port)
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
                    self.reply(waiting, matched[1])
        if fwd.upstream_id in self._waiting:
            self._fail(fwd.upstream_id)

    def _fail(self, upstream_id: int) -> None:
        failed = self.handler.fail(upstream_id)
        waiting = self._waiting.pop(upstream_id, None)
        if failed is not None and waiting is not None:
            self.stats["dns_servfail"] += 1
            self.reply(waiting, failed[1])

    def on_timer(self, now: float) -> None:
        for fwd, answer in self.handler.expire(now):
            waiting = self._waiting.pop(fwd.upstream_id, None)
            if waiting is not None:
                self.stats["dns_servfail"] += 1
                self.reply(waiting, answer)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
