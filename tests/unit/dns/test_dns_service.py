"""The DNS service's upstream exchange against a resolver that answers garbage.

In hijack mode the upstream is whatever address the app sent its query to, so what
comes back is the app's (or anyone's) to choose. A real TCP resolver on loopback, reached
through the real direct outbound, answers each query with the bytes under test.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest
from dnslib import RCODE, DNSRecord

from ztun.dns import DnsHandler, DnsMode
from ztun.dnsflow import DnsService
from ztun.outbound.direct import DirectOutbound
from ztun.stack.events import UdpDatagram, UdpSession


async def serve_once(answer: bytes) -> tuple[socket.socket, asyncio.Task[bytes]]:
    """A resolver on 127.0.0.1 that reads one query and writes `answer`; the task's
    result is the query it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def one() -> bytes:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            query = await loop.sock_recv(conn, 4096)
            await loop.sock_sendall(conn, answer)
            await loop.sock_recv(conn, 1)  # until ztun closes its end
            return query

    return listener, loop.create_task(one())


@pytest.mark.parametrize(
    "answer",
    [b"\x00\x00", b"\x00\x00" + bytes(40)],
    ids=["zero-length-frame", "zero-length-frame-then-more"],
)
def test_a_zero_length_frame_from_the_upstream_is_a_prompt_servfail(answer: bytes) -> None:
    """RFC 7766 frames are 1..65535 bytes; TcpDnsDeframer refuses a length of 0 with a
    ValueError, which escaped the exchange task: no SERVFAIL until the handler's timer
    (UPSTREAM_TIMEOUT later), and "Task exception was never retrieved" in the log."""
    asyncio.run(asyncio.wait_for(exchange(answer), 20))


async def exchange(answer: bytes) -> None:
    listener, resolver = await serve_once(answer)
    port = listener.getsockname()[1]
    replies: list[bytes] = []
    stats: Counter[str] = Counter()
    service = DnsService(
        DnsHandler(DnsMode.HIJACK),
        DirectOutbound(connect_timeout=5),
        lambda _datagram, payload: replies.append(payload),
        stats,
    )
    query = DNSRecord.question("example.com", "A")
    query.header.id = 0x1234
    session = UdpSession(4, bytes([127, 0, 0, 1]), 40000, 0.0)
    loop = asyncio.get_running_loop()
    with listener:
        service.on_query(
            UdpDatagram(session, bytes([127, 0, 0, 1]), port, query.pack()), loop.time()
        )
        (task,) = service._tasks
        await asyncio.wait_for(asyncio.shield(task), 10)
        await asyncio.wait_for(resolver, 10)
    assert task.exception() is None
    (reply,) = replies
    record = DNSRecord.parse(reply)
    assert (record.header.id, record.header.rcode) == (0x1234, RCODE.SERVFAIL)
    assert stats["dns_servfail"] == 1 and stats["dns_upstream_malformed"] == 1
