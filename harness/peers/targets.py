"""Traffic targets that run inside the server host: TCP echo, UDP echo, TCP data sink/source.

Run as ``python -m harness.peers.targets KIND --listen ADDR:PORT [--listen ...] [--log F]``;
the process prints ``listening on ADDR:PORT[, ...]`` once every socket is bound.

``tcp-data`` speaks a one-line protocol so one server covers every transfer test and the
client can check the result end to end without trusting anything in between:

``SINK\\n``               then data until the client half-closes; the server answers
                          ``<count> <sha256>\\n`` and closes.
``SOURCE <n> <seed>\\n``  the server sends ``n`` bytes of :func:`seeded_bytes` and closes.
``DUPLEX <n> <seed>\\n``  both at once: the server sends ``n`` seeded bytes while it hashes
                          what the client sends; after the client's half-close it appends
                          ``<count> <sha256>\\n`` and closes.

The seeded data is cheap to regenerate on both sides (:func:`seeded_chunks`), so 100 MiB
transfers never hold 100 MiB in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

from harness.peers.recording import READY_LINE, format_sockaddr, parse_listen

CHUNK = 64 * 1024
MAX_COMMAND_LINE = 256
COMMAND_TIMEOUT = 30.0  # seconds a tcp-data client has to send its command line
MAX_UDP = 65535


# --------------------------------------------------------------------------- seeded data


def seeded_chunks(seed: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in chunks; chunk ``i`` depends only on (seed, i).

    Deriving each chunk from its own generator lets two processes produce and check the
    same stream independently, and keeps memory flat whatever ``size`` is.
    """
    index = 0
    remaining = size
    while remaining > 0:
        part = min(chunk, remaining)
        yield random.Random(f"ztun-harness/{seed}/{index}").randbytes(part)
        remaining -= part
        index += 1


def seeded_bytes(seed: int, size: int) -> bytes:
    """All of :func:`seeded_chunks` at once (for small sizes)."""
    return b"".join(seeded_chunks(seed, size))


def seeded_sha256(seed: int, size: int) -> str:
    """sha256 of :func:`seeded_bytes` without holding it in memory."""
    digest = hashlib.sha256()
    for part in seeded_chunks(seed, size):
        digest.update(part)
    return digest.hexdigest()


# --------------------------------------------------------------------------- clients


def sink_upload(sock: socket.socket, size: int, seed: int) -> tuple[int, str]:
    """The client of SINK on a connected ``sock``: send ``size`` seeded bytes, half-close,
    return the server's count and sha256 (compare with ``(size, seeded_sha256(...))``)."""
    sock.sendall(b"SINK\n")
    for part in seeded_chunks(seed, size):
        sock.sendall(part)
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while data := sock.recv(CHUNK):
        answer += data
    count, sha = answer.decode("ascii", errors="replace").split()
    return int(count), sha


def source_download(sock: socket.socket, size: int, seed: int) -> tuple[int, str]:
    """The client of SOURCE on a connected ``sock``: the count and sha256 of what came."""
    sock.sendall(f"SOURCE {size} {seed}\n".encode())
    digest = hashlib.sha256()
    count = 0
    while data := sock.recv(1 << 20):
        digest.update(data)
        count += len(data)
    return count, digest.hexdigest()


def echo_roundtrip(sock: socket.socket, size: int, seed: int) -> tuple[int, str]:
    """Through a TCP echo on a connected ``sock``: send ``size`` seeded bytes (from a thread)
    while reading the echo back; the count and sha256 of what came back.

    Needs no half-close, so it crosses relays that close both directions on the first EOF
    (microsocks, tinyproxy), where SINK's answer would be lost.
    """
    failure: list[BaseException] = []

    def send() -> None:
        try:
            for part in seeded_chunks(seed, size):
                sock.sendall(part)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send, name="echo-roundtrip-send", daemon=True)
    sender.start()
    digest = hashlib.sha256()
    count = 0
    try:
        while count < size and (data := sock.recv(min(1 << 20, size - count))):
            digest.update(data)
            count += len(data)
    finally:
        sender.join(sock.gettimeout())
    if failure:
        raise failure[0]
    return count, digest.hexdigest()


# --------------------------------------------------------------------------- log


class _Log:
    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None

    def write(self, **fields: Any) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": time.time(), **fields}, sort_keys=True) + "\n")
            self._file.flush()


# --------------------------------------------------------------------------- servers


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: _Log) -> None:
    peer = format_sockaddr(writer.get_extra_info("peername"))
    total = 0
    try:
        while data := await reader.read(CHUNK):
            total += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # echo the half-close too
    except (ConnectionError, OSError):
        pass
    finally:
        log.write(kind="tcp-echo", client=peer, bytes=total)
        writer.close()


async def _hash_until_eof(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    while data := await reader.read(CHUNK):
        count += len(data)
        digest.update(data)
    return count, digest.hexdigest()


async def _send_seeded(writer: asyncio.StreamWriter, seed: int, size: int) -> None:
    for part in seeded_chunks(seed, size):
        writer.write(part)
        await writer.drain()


async def _tcp_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: _Log) -> None:
    peer = format_sockaddr(writer.get_extra_info("peername"))
    record: dict[str, Any] = {"kind": "tcp-data", "client": peer}
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            line = await reader.readuntil(b"\n")
        words = line.decode("ascii", errors="replace").split()
        mode = words[0].upper() if words else ""
        record["mode"] = mode
        if mode == "SINK":
            count, sha = await _hash_until_eof(reader)
            record.update(bytes_received=count, sha256_received=sha)
            writer.write(f"{count} {sha}\n".encode())
        elif mode in ("SOURCE", "DUPLEX") and len(words) == 3:
            size, seed = int(words[1]), int(words[2])
            record.update(bytes_sent=size, seed=seed)
            if mode == "SOURCE":
                await _send_seeded(writer, seed, size)
            else:
                receiving = asyncio.ensure_future(_hash_until_eof(reader))
                await _send_seeded(writer, seed, size)
                count, sha = await receiving
                record.update(bytes_received=count, sha256_received=sha)
                writer.write(f"{count} {sha}\n".encode())
        else:
            record["error"] = f"bad command {line[:MAX_COMMAND_LINE]!r}"
            writer.write(b"ERR expected SINK, SOURCE <n> <seed> or DUPLEX <n> <seed>\n")
        await writer.drain()
    except (
        ConnectionError,
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ValueError,
    ) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        log.write(**record)
        writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, log: _Log) -> None:
        self.log = log
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)
        self.log.write(
            kind="udp-echo",
            client=format_sockaddr(addr),
            len=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )


async def serve_tcp_echo(host: str, port: int, *, log: Path | None = None) -> asyncio.Server:
    """A TCP echo server on the running loop (in-process use; the CLI wraps it)."""
    sink = _Log(log)

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _tcp_echo(r, w, sink)

    return await asyncio.start_server(accept, host, port, reuse_address=True)


async def serve_tcp_data(host: str, port: int, *, log: Path | None = None) -> asyncio.Server:
    """The SINK/SOURCE/DUPLEX server on the running loop."""
    sink = _Log(log)

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _tcp_data(r, w, sink)

    return await asyncio.start_server(accept, host, port, reuse_address=True)


async def serve_udp_echo(
    host: str, port: int, *, log: Path | None = None
) -> asyncio.DatagramTransport:
    """A UDP echo endpoint on the running loop."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _UdpEcho(_Log(log)), local_addr=(host, port)
    )
    return transport


async def _serve(kind: str, listens: list[tuple[str, int]], log: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers: list[asyncio.Server | asyncio.DatagramTransport] = []
    bound: list[str] = []
    for host, port in listens:
        if kind == "udp-echo":
            transport = await serve_udp_echo(host, port, log=log)
            closers.append(transport)
            bound.append(format_sockaddr(transport.get_extra_info("sockname")))
        else:
            serve = serve_tcp_echo if kind == "tcp-echo" else serve_tcp_data
            server = await serve(host, port, log=log)
            closers.append(server)
            bound.append(format_sockaddr(server.sockets[0].getsockname()))
    print(f"{READY_LINE} {', '.join(bound)}", flush=True)
    await stop.wait()
    for item in closers:
        with contextlib.suppress(Exception):
            item.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.peers.targets", description="Traffic targets of the ztun harness."
    )
    parser.add_argument("kind", choices=["tcp-echo", "udp-echo", "tcp-data"])
    parser.add_argument(
        "--listen", type=parse_listen, action="append", required=True, metavar="ADDR:PORT"
    )
    parser.add_argument("--log", type=Path, metavar="FILE.jsonl")
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args.kind, args.listen, args.log))


if __name__ == "__main__":
    sys.exit(main())
