"""The built-in SOCKS5 server's ``--map PREFIX=HOST``: what the single-host checks use to
serve a documentation prefix from loopback.  Everything here stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from ztun.outbound.socks5_proto import (
    AddressType,
    Command,
    decode_udp_header,
    encode_request,
    encode_udp_header,
)
from ztun.outbound.target import Target
from ztun.servers import socks5

MAP = ((ipaddress.ip_network("198.51.100.0/24"), "127.0.0.1"),)


def test_mapped_only_inside_the_prefix() -> None:
    assert socks5.mapped("198.51.100.7", MAP) == "127.0.0.1"
    assert socks5.mapped("198.51.101.7", MAP) == "198.51.101.7"
    assert socks5.mapped("example.com", MAP) == "example.com"


@pytest.mark.parametrize("text", ["198.51.100.0/24", "198.51.100.0/24=", "x=127.0.0.1"])
def test_a_bad_mapping_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError):
        socks5.parse_mapping(text)


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cmd: int) -> bytes:
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    port = 0 if cmd == Command.UDP_ASSOCIATE else PORT[0]
    writer.write(encode_request(Command(cmd), Target("198.51.100.7", port)))
    reply = await reader.readexactly(4)
    assert reply[:2] == b"\x05\x00", reply
    rest = await reader.readexactly(4 + 2 if reply[3] == AddressType.IPV4 else 16 + 2)
    return rest


PORT = [0]


async def _exchange() -> tuple[bytes, bytes, str]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    tcp_target = await asyncio.start_server(echo, "127.0.0.1", 0)
    PORT[0] = tcp_target.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    class UdpEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)

    udp_target, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    udp_port = udp_target.get_extra_info("sockname")[1]
    proxy = await asyncio.start_server(socks5.Socks5Server(mapping=MAP).handle, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        await _greet(reader, writer, Command.CONNECT)
        writer.write(b"through")
        tcp_answer = await asyncio.wait_for(reader.read(100), 5)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        relay = await _greet(reader, writer, Command.UDP_ASSOCIATE)
        relay_addr = (str(ipaddress.IPv4Address(relay[:4])), struct.unpack("!H", relay[4:])[0])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.bind(("127.0.0.1", 0))
        header = encode_udp_header(Target("198.51.100.7", udp_port))
        await loop.sock_sendto(client, header + b"datagram", relay_addr)
        answer = await asyncio.wait_for(loop.sock_recv(client, 200), 5)
        asked = decode_udp_header(answer)
        client.close()
        writer.close()
        return (
            tcp_answer,
            answer[asked.length :],
            f"{asked.target.host}:{asked.target.port == udp_port}",
        )
    finally:
        proxy.close()
        tcp_target.close()
        udp_target.close()


def test_tcp_and_udp_to_the_prefix_reach_loopback_and_udp_answers_name_the_asked_address() -> None:
    tcp, udp, source = asyncio.run(asyncio.wait_for(_exchange(), 20))
    assert tcp == b"through" and udp == b"datagram"
    assert source == "198.51.100.7:True"  # not 127.0.0.1: the client sees what it asked
