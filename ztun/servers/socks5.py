"""A minimal SOCKS5 server (RFC 1928 CONNECT + UDP ASSOCIATE, RFC 1929 auth).

It exists so `ztun demo` runs where neither microsocks nor danted is installed; it is not
a production proxy. `python -m ztun.servers.socks5 --listen 10.0.0.2:1080`.

``--map 198.51.100.0/24=127.0.0.1`` sends what is asked for inside a prefix to another
host instead (the ports stay): the single-host checks route a documentation prefix into
ztun's TUN and serve it from loopback.  UDP answers carry the address the client asked
for, so a mapped association looks to the client exactly like an unmapped one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TypeVar

from ztun.outbound.socks5_proto import (
    NO_ACCEPTABLE_METHODS,
    UNBOUND,
    Command,
    Method,
    RemoteProtocolError,
    Reply,
    decode_auth_request,
    decode_greeting,
    decode_request,
    decode_udp_header,
    encode_auth_status,
    encode_method_selection,
    encode_reply,
    encode_udp_header,
)
from ztun.outbound.target import Target

log = logging.getLogger("ztun.socks5-server")

_READ_CHUNK = 4096
Decoded = TypeVar("Decoded", bound=tuple[object, ...])


async def _read_message(
    reader: asyncio.StreamReader, buf: bytearray, decode: Callable[[bytearray], Decoded | None]
) -> Decoded:
    """Read until `decode` finds a whole message in `buf`; it is removed from `buf`, and
    what follows it (pipelined bytes) stays there."""
    while (parsed := decode(buf)) is None:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buf), None)
        buf += chunk
    end = parsed[-1]
    assert isinstance(end, int)
    del buf[:end]
    return parsed


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mapping = tuple[tuple[IPNetwork, str], ...]


def mapped(host: str, mapping: Mapping) -> str:
    """Where ``host`` is really reached: the target of the first prefix holding it."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host  # a domain: never mapped
    for net, target in mapping:
        if addr in net:
            return target
    return host


def parse_mapping(text: str) -> tuple[IPNetwork, str]:
    """``PREFIX=HOST`` (argparse type): ValueError says what is wrong."""
    prefix, sep, target = text.partition("=")
    if not sep or not target:
        raise ValueError(f"--map {text!r}: expected PREFIX=HOST, e.g. 198.51.100.0/24=127.0.0.1")
    return ipaddress.ip_network(prefix), str(ipaddress.ip_address(target))


class _UdpRelay(asyncio.DatagramProtocol):
    """Client datagrams (with RFC 1928 sec. 7 headers) out; answers wrapped and returned."""

    def __init__(self, mapping: Mapping = ()) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.client: tuple[str, int] | None = None
        self.mapping = mapping
        self.asked: dict[tuple[str, int], tuple[str, int]] = {}  # mapped -> asked-for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if self.client is None or addr[:2] == self.client[:2]:
            try:
                header = decode_udp_header(data)
            except RemoteProtocolError:
                return
            if header.frag:
                return  # fragmented datagrams are not supported (RFC 1928 allows dropping)
            self.client = addr
            host, port = header.target.host, header.target.port
            target = (mapped(host, self.mapping), port)
            if target[0] != host:
                self.asked[target] = (host, port)
            self.transport.sendto(data[header.length :], target)
        else:
            host, port = self.asked.get((addr[0], addr[1]), (addr[0], addr[1]))
            self.transport.sendto(encode_udp_header(Target(host, port)) + data, self.client)


class Socks5Server:
    def __init__(
        self, username: str | None = None, password: str | None = None, mapping: Mapping = ()
    ) -> None:
        self.username = username
        self.password = password
        self.mapping = mapping

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            RemoteProtocolError,
            ValueError,
        ) as exc:
            log.debug("client dropped: %s", exc)
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        methods, _ = await _read_message(reader, buf, decode_greeting)
        want = Method.USERNAME_PASSWORD if self.username is not None else Method.NO_AUTH
        if want not in methods:
            writer.write(NO_ACCEPTABLE_METHODS)
            return
        writer.write(encode_method_selection(want))
        if want == Method.USERNAME_PASSWORD:
            user, password, _ = await _read_message(reader, buf, decode_auth_request)
            ok = user == self.username and password == self.password
            writer.write(encode_auth_status(ok))
            if not ok:
                return
        cmd, target, _ = await _read_message(reader, buf, decode_request)
        host, port = target.host, target.port
        peer = writer.get_extra_info("peername")
        if cmd == Command.CONNECT:
            try:
                r2, w2 = await asyncio.wait_for(
                    asyncio.open_connection(mapped(host, self.mapping), port), 10
                )
            except (OSError, TimeoutError):
                writer.write(encode_reply(Reply.CONNECTION_REFUSED, UNBOUND))
                return
            bound = w2.get_extra_info("sockname")
            writer.write(encode_reply(Reply.SUCCEEDED, Target(bound[0], bound[1])))
            log.info("CONNECT %s:%s -> %s:%s", peer[0], peer[1], host, port)
            if buf:  # tunnel bytes that came with the request
                w2.write(bytes(buf))
            await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))
        elif cmd == Command.UDP_ASSOCIATE:
            local = writer.get_extra_info("sockname")
            family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
            loop = asyncio.get_running_loop()
            # Bound to the wildcard, not to the address the client reached: datagrams to a
            # target then leave from the address the route to it picks (a proxy between two
            # subnets must not send from its client-side address, which the target's side
            # has no route back to). The reply names the client-side address and the port.
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpRelay(self.mapping), local_addr=(wildcard, 0), family=family
            )
            bound = (local[0], transport.get_extra_info("sockname")[1])
            writer.write(encode_reply(Reply.SUCCEEDED, Target(bound[0], bound[1])))
            log.info("UDP ASSOCIATE %s:%s relay %s:%s", peer[0], peer[1], bound[0], bound[1])
            try:
                await reader.read()  # the association lives as long as its TCP connection
            finally:
                transport.close()
        else:
            writer.write(encode_reply(Reply.COMMAND_NOT_SUPPORTED, UNBOUND))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
    except ConnectionError:
        writer.close()


async def serve(
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    mapping: Mapping = (),
) -> None:
    handler = Socks5Server(username, password, mapping).handle
    server = await asyncio.start_server(handler, host, port)
    log.info("listening on %s:%d", host, port)
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument(
        "--map",
        action="append",
        type=parse_mapping,
        default=[],
        metavar="PREFIX=HOST",
        help="reach destinations inside PREFIX at HOST instead (repeatable)",
    )
    ns = parser.parse_args()
    host, _, port = ns.listen.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host.strip("[]"), int(port), ns.user, ns.password, tuple(ns.map)))


if __name__ == "__main__":
    main()
