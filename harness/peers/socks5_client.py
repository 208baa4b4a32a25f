"""A small blocking SOCKS5 client, for checking proxies and the recording server directly.

Tests of a tun2socks never need it (the tun2socks is the client); tests of the harness
itself and sanity checks of a proxy before a run do. Sockets are passed in or opened with
``socket.create_connection``, so a caller can hand over a socket opened inside a Host.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from harness.peers.socks5_wire import (
    AUTH_VERSION,
    SOCKS_VERSION,
    Address,
    Command,
    Method,
    Reply,
    Socks5Error,
    address_length,
    decode_address,
    decode_udp_datagram,
    encode_greeting,
    encode_request,
    encode_udp_datagram,
    encode_userpass,
    reply_name,
)

REPLY_HEAD = 3  # VER REP RSV before BND.ADDR


class Socks5ClientError(Exception):
    """The proxy refused or broke the protocol; ``reply`` is its reply code if it sent one."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reply = reply


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise Socks5ClientError(f"proxy closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def handshake(
    sock: socket.socket,
    command: Command,
    target: Address,
    *,
    username: str | None = None,
    password: str | None = None,
) -> Address:
    """Greeting, optional RFC 1929 auth and one request on ``sock``; returns BND address."""
    methods = [Method.USERNAME_PASSWORD] if username is not None else [Method.NO_AUTH]
    sock.sendall(encode_greeting(methods))
    version, method = _recv_exact(sock, 2)
    if version != SOCKS_VERSION:
        raise Socks5ClientError(f"proxy answered version {version}")
    if method == Method.NO_ACCEPTABLE:
        raise Socks5ClientError("proxy accepts none of the offered methods")
    if method == Method.USERNAME_PASSWORD:
        if username is None or password is None:
            raise Socks5ClientError("proxy wants a username and password")
        sock.sendall(encode_userpass(username, password))
        auth_version, status = _recv_exact(sock, 2)
        if auth_version != AUTH_VERSION or status != 0:
            raise Socks5ClientError(f"authentication failed (status {status})")
    sock.sendall(encode_request(command, target))
    head = _recv_exact(sock, REPLY_HEAD)
    if head[1] != Reply.SUCCEEDED:
        raise Socks5ClientError(f"proxy replied {reply_name(head[1])}", head[1])
    first = _recv_exact(sock, 2)
    need = address_length(first)
    if need is None:
        raise Socks5Error("bad bound address")
    rest = _recv_exact(sock, need - 2)
    bound, _ = decode_address(first + rest)
    return bound


def connect(
    proxy: tuple[str, int],
    target: tuple[str, int],
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> socket.socket:
    """Open a TCP connection to ``target`` through ``proxy`` (CONNECT)."""
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        handshake(
            sock, Command.CONNECT, Address.from_host(*target), username=username, password=password
        )
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class UdpSession:
    """A UDP ASSOCIATE: keep ``control`` open for as long as the association should live."""

    control: socket.socket
    udp: socket.socket
    relay: tuple[str, int]

    def send(self, target: tuple[str, int], payload: bytes) -> None:
        self.udp.sendto(encode_udp_datagram(Address.from_host(*target), payload), self.relay)

    def recv(self) -> tuple[Address, bytes]:
        data, _ = self.udp.recvfrom(65535)
        dgram = decode_udp_datagram(data)
        return dgram.target, dgram.payload

    def close(self) -> None:
        self.udp.close()
        self.control.close()


def udp_associate(
    proxy: tuple[str, int],
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> UdpSession:
    """UDP ASSOCIATE, declaring the UDP socket's real address (strict servers check it)."""
    control = socket.create_connection(proxy, timeout=timeout)
    family = control.family
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.settimeout(timeout)
    try:
        udp.bind((control.getsockname()[0], 0))
        local = udp.getsockname()
        bound = handshake(
            control,
            Command.UDP_ASSOCIATE,
            Address.from_host(local[0], local[1]),
            username=username,
            password=password,
        )
    except BaseException:
        udp.close()
        control.close()
        raise
    relay_host = bound.host
    if relay_host in ("0.0.0.0", "::"):  # RFC 1928 leaves it to the client: use the proxy's
        relay_host = proxy[0]
    return UdpSession(control=control, udp=udp, relay=(relay_host, bound.port))
