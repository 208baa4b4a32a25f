"""`socks-relay`'s extra hop: a loopback TCP listener that relays every connection to the
SOCKS5 server with ztun's own relay (`ztun.relay`: splice(2) on Linux), nothing else.

proxychains4 points at this listener instead of at danted, so the app still speaks SOCKS5
itself and the only thing added to `socks-only` is one accepted TCP connection and a
user-space relay -- what any tun2socks that ends the app's TCP and relays it to the proxy
pays at least, without a TUN, a stack or a handshake of its own. The bench bills this
process's CPU like a tun2socks's, so the cost of the hop itself is visible too.

That makes its bulk and request/response figures a floor for the relay hop. Its new
connection figure is not one: proxychains' SOCKS5 greeting and CONNECT cross the hop as
two round trips, where a tun2socks that pipelines them pays one.

Run as `python -m ztun.bench.relay_hop LISTEN_PORT PROXY_HOST PROXY_PORT` (inside the
client namespace); it prints `relay hop ready` once it listens and runs until killed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys

from ..relay import HAVE_SPLICE, SHARED_BUFFER_SIZE, PipePool, Relay, close_with_reset

ACCEPT_BATCH = 64


class RelayHop:
    def __init__(self, loop: asyncio.AbstractEventLoop, listen_port: int, proxy: tuple[str, int]):
        self.loop = loop
        self.proxy = proxy
        self.listener = socket.create_server(("127.0.0.1", listen_port), backlog=1024)
        self.listener.setblocking(False)
        self.pipes = PipePool() if HAVE_SPLICE else None
        self.buffer = memoryview(bytearray(SHARED_BUFFER_SIZE))
        self.relays: set[Relay] = set()
        self.port: int = self.listener.getsockname()[1]
        loop.add_reader(self.listener.fileno(), self._on_accept)

    def close(self) -> None:
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()
        for relay in list(self.relays):
            relay.abort()
        if self.pipes is not None:
            self.pipes.close()

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connect(conn)

    def _connect(self, conn: socket.socket) -> None:
        remote = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        remote.setblocking(False)
        remote.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if remote.connect_ex(self.proxy) not in (0, errno.EINPROGRESS):
            close_with_reset(conn)
            remote.close()
            return

        def connected() -> None:
            self.loop.remove_writer(remote.fileno())
            if remote.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                close_with_reset(conn)
                remote.close()
                return
            relay = Relay(self.loop, conn, remote, self.buffer, self._closed, self.pipes)
            self.relays.add(relay)
            relay.start()

        self.loop.add_writer(remote.fileno(), connected)

    def _closed(self, relay: Relay, _exc: BaseException | None) -> None:
        self.relays.discard(relay)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m ztun.bench.relay_hop LISTEN_PORT PROXY_HOST PROXY_PORT")
        return 2
    loop = asyncio.new_event_loop()
    RelayHop(loop, int(argv[0]), (argv[1], int(argv[2])))
    print("relay hop ready", flush=True)
    loop.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
