"""socks-relay's hop relays every byte both ways and passes the half-close on (loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

from ztun.bench.relay_hop import RelayHop


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.close()  # after the client's FIN: echo it back as ours


async def _through_hop(payload: bytes) -> bytes:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hop = RelayHop(asyncio.get_running_loop(), 0, ("127.0.0.1", port))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await asyncio.wait_for(reader.read(), 30)  # until the echo's FIN
        await sender
        writer.close()
        return echoed
    finally:
        hop.close()
        server.close()


def test_hop_carries_every_byte_and_the_fin() -> None:
    payload = os.urandom(3 << 20)
    echoed = asyncio.run(_through_hop(payload))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test_hop_resets_the_app_when_the_proxy_refuses() -> None:
    async def refused() -> bytes | Exception:
        closed = socket_port_nobody_listens_on()
        hop = RelayHop(asyncio.get_running_loop(), 0, ("127.0.0.1", closed))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)
            try:
                return await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError as exc:
                return exc
            finally:
                writer.close()
        finally:
            hop.close()

    assert isinstance(asyncio.run(refused()), ConnectionResetError)


def socket_port_nobody_listens_on() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens there
