"""A burst of new UDP flows, and the echo server that answers them (the `udp-burst` figure).

DNS-heavy hosts and QUIC clients open many short UDP flows at once: each is a new source
port, so a tun2socks sees a new session -- and, naively, sets up a new UDP ASSOCIATE --
per datagram. The client opens `flows` sockets, sends one datagram from each, `batch` of
them every `interval` seconds, and counts the flows whose datagram came back (byte for
byte) within `wait` seconds of the last send.

    python -m ztun.bench.udpburst echo --listen 10.211.0.2:7007
    python -m ztun.bench.udpburst burst --target 10.211.0.2:7007 --flows 3000

`burst` prints one JSON object: flows, delivered, delivered_pct, send_seconds (the burst
as sent) and seconds (first send to last echo).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

FLOWS, BATCH, INTERVAL, WAIT = 3000, 200, 0.010, 20.0
PAYLOAD = 64  # bytes: a DNS query's size; the flow's number and a nonce, then padding
ECHO_RCVBUF = 8 << 20  # the echo server must not be where a burst is lost
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it
_HEAD = struct.Struct("!IQ")


@dataclass(frozen=True, slots=True)
class BurstResult:
    flows: int
    delivered: int
    send_seconds: float
    seconds: float

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.delivered / self.flows if self.flows else 0.0


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def echo(listen: tuple[str, int]) -> None:
    """Answer every datagram with itself, from one socket, until killed."""
    sock = socket.socket(_family(listen[0]), socket.SOCK_DGRAM)
    try:  # root may exceed rmem_max (SO_RCVBUFFORCE); else rmem_max caps it
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, ECHO_RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ECHO_RCVBUF)
    sock.bind(listen)
    print(f"echo listening on {listen[0]}:{listen[1]}", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        # A full buffer or an ICMP error: the network would lose it too.
        with contextlib.suppress(OSError):
            sock.sendto(data, peer)


def burst(
    target: tuple[str, int],
    *,
    flows: int = FLOWS,
    batch: int = BATCH,
    interval: float = INTERVAL,
    wait: float = WAIT,
) -> BurstResult:
    """Send one datagram from each of `flows` new sockets, `batch` every `interval`; count
    the echoes that come back within `wait` seconds of the last send. Bounded in count
    (`flows` datagrams) and in time (the sends take flows/batch*interval, then `wait`)."""
    family = _family(target[0])
    nonce = int.from_bytes(os.urandom(8), "big")
    poller = select.epoll()
    socks: dict[int, tuple[socket.socket, bytes]] = {}
    delivered = 0
    start = time.monotonic()
    last_echo = start
    try:
        next_batch = start
        for first in range(0, flows, batch):
            for number in range(first, min(first + batch, flows)):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                payload = _HEAD.pack(number, nonce).ljust(PAYLOAD, b"z")
                socks[sock.fileno()] = (sock, payload)
                poller.register(sock.fileno(), select.EPOLLIN)
                with contextlib.suppress(OSError):  # counted as not delivered
                    sock.sendto(payload, target)
            next_batch += interval
            while (left := next_batch - time.monotonic()) > 0:  # read echoes until the next
                got = _collect(poller, socks, left)
                if got:
                    delivered += got
                    last_echo = time.monotonic()
        send_seconds = time.monotonic() - start
        deadline = time.monotonic() + wait
        while socks and (left := deadline - time.monotonic()) > 0:
            got = _collect(poller, socks, min(left, 0.5))
            if got:
                delivered += got
                last_echo = time.monotonic()
    finally:
        for sock, _ in socks.values():
            sock.close()
        poller.close()
    return BurstResult(flows, delivered, send_seconds, last_echo - start)


def _collect(
    poller: select.epoll, socks: dict[int, tuple[socket.socket, bytes]], timeout: float
) -> int:
    """Read what is ready within `timeout`; returns how many flows got their echo back."""
    got = 0
    for fd, _ in poller.poll(timeout):
        entry = socks.get(fd)
        if entry is None:
            continue
        sock, payload = entry
        try:
            data = sock.recv(65535)
        except OSError:
            continue
        if data == payload:
            got += 1
            poller.unregister(fd)
            del socks[fd]
            sock.close()
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztun.bench.udpburst")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo", help="a UDP echo server")
    e.add_argument("--listen", required=True, help="HOST:PORT")
    b = sub.add_parser("burst", help="a burst of new UDP flows; prints JSON")
    b.add_argument("--target", required=True, help="HOST:PORT of the echo server")
    b.add_argument("--flows", type=int, default=FLOWS)
    b.add_argument("--batch", type=int, default=BATCH)
    b.add_argument("--interval", type=float, default=INTERVAL)
    b.add_argument("--wait", type=float, default=WAIT)
    args = parser.parse_args(argv)
    if args.cmd == "echo":
        with contextlib.suppress(KeyboardInterrupt):
            echo(_split(args.listen))
        return 0
    result = burst(
        _split(args.target),
        flows=args.flows,
        batch=args.batch,
        interval=args.interval,
        wait=args.wait,
    )
    print(json.dumps({**asdict(result), "delivered_pct": result.delivered_pct}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
