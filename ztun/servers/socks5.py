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
import struct

log = logging.getLogger("ztun.socks5-server")

VER = 5
CMD_CONNECT, CMD_UDP_ASSOCIATE = 1, 3
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4
REP_OK, REP_FAILURE, REP_REFUSED, REP_CMD_UNSUPPORTED = 0, 1, 5, 7


def encode_addr(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode("idna")
        return bytes((ATYP_DOMAIN, len(raw))) + raw + struct.pack("!H", port)
    atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def decode_addr(data: bytes, offset: int) -> tuple[str, int, int]:
    """(host, port, end offset) of an RFC 1928 address at `offset`; ValueError when short."""
    atyp = data[offset]
    if atyp == ATYP_V4:
        end = offset + 1 + 4
        host = str(ipaddress.IPv4Address(data[offset + 1 : end]))
    elif atyp == ATYP_V6:
        end = offset + 1 + 16
        host = str(ipaddress.IPv6Address(data[offset + 1 : end]))
    elif atyp == ATYP_DOMAIN:
        end = offset + 2 + data[offset + 1]
        host = data[offset + 2 : end].decode("idna")
    else:
        raise ValueError(f"address type {atyp}")
    if len(data) < end + 2:
        raise ValueError("short address")
    (port,) = struct.unpack_from("!H", data, end)
    return host, port, end + 2


async def _read_addr(reader: asyncio.StreamReader) -> tuple[str, int]:
    atyp = (await reader.readexactly(1))[0]
    if atyp == ATYP_DOMAIN:
        n = (await reader.readexactly(1))[0]
        rest = bytes((n,)) + await reader.readexactly(n + 2)
    else:
        rest = await reader.readexactly((4 if atyp == ATYP_V4 else 16) + 2)
    host, port, _ = decode_addr(bytes((atyp,)) + rest, 0)
    return host, port


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
            if len(data) < 4 or data[2] != 0:
                return  # fragmented datagrams are not supported (RFC 1928 allows dropping)
            self.client = addr
            try:
                host, port, end = decode_addr(data, 3)
            except (ValueError, IndexError):
                return
            target = (mapped(host, self.mapping), port)
            if target[0] != host:
                self.asked[target] = (host, port)
            self.transport.sendto(data[end:], target)
        else:
            host, port = self.asked.get((addr[0], addr[1]), (addr[0], addr[1]))
            self.transport.sendto(b"\0\0\0" + encode_addr(host, port) + data, self.client)


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
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.debug("client dropped: %s", exc)
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ver, n = await reader.readexactly(2)
        methods = await reader.readexactly(n)
        want = 2 if self.username is not None else 0
        if ver != VER or want not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(bytes((VER, want)))
        if want == 2:
            _, ulen = await reader.readexactly(2)
            user = await reader.readexactly(ulen)
            plen = (await reader.readexactly(1))[0]
            password = await reader.readexactly(plen)
            ok = user.decode() == self.username and password.decode() == self.password
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                return
        _ver, cmd, _rsv = await reader.readexactly(3)
        host, port = await _read_addr(reader)
        peer = writer.get_extra_info("peername")
        if cmd == CMD_CONNECT:
            try:
                r2, w2 = await asyncio.wait_for(
                    asyncio.open_connection(mapped(host, self.mapping), port), 10
                )
            except (OSError, TimeoutError):
                writer.write(b"\x05" + bytes((REP_REFUSED,)) + b"\x00" + encode_addr("0.0.0.0", 0))
                return
            bound = w2.get_extra_info("sockname")
            writer.write(b"\x05\x00\x00" + encode_addr(bound[0], bound[1]))
            log.info("CONNECT %s:%s -> %s:%s", peer[0], peer[1], host, port)
            await asyncio.gather(_pipe(reader, w2), _pipe(r2, writer))
        elif cmd == CMD_UDP_ASSOCIATE:
            local = writer.get_extra_info("sockname")
            family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpRelay(self.mapping), local_addr=(local[0], 0), family=family
            )
            bound = transport.get_extra_info("sockname")
            writer.write(b"\x05\x00\x00" + encode_addr(bound[0], bound[1]))
            log.info("UDP ASSOCIATE %s:%s relay %s:%s", peer[0], peer[1], bound[0], bound[1])
            try:
                await reader.read()  # the association lives as long as its TCP connection
            finally:
                transport.close()
        else:
            writer.write(
                b"\x05" + bytes((REP_CMD_UNSUPPORTED,)) + b"\x00" + encode_addr("0.0.0.0", 0)
            )


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
