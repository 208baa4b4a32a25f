"""A SOCKS5 server that answers every CONNECT with success and then only holds the connection.

The bench's idle-connection figure needs a proxy that is not itself the limit: every
process here is capped at 20,000 descriptors (hard RLIMIT_NOFILE, not raisable without
CAP_SYS_RESOURCE); a relaying proxy spends two per connection (Go's, sing-box's, also a
splice pipe pair per direction: it stalls near 3,300), danted a process per few clients.
This one spends one, so the tun2socks under test is what runs out first. The tun2socks sees
a real RFC 1928 exchange; nothing is relayed, because idle connections carry nothing.

    python -m ztun.bench.holdsocks --listen 10.210.0.2:1082

It prints `held N` (rate-limited) whenever the count of answered CONNECTs changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

VER, NO_AUTH, CMD_CONNECT = 5, 0, 1
ATYP_LEN = {1: 4, 4: 16}  # IPv4 / IPv6 address lengths; 3 (domain) has a length byte
REPLY_OK = bytes((VER, 0, 0, 1, 0, 0, 0, 0, 0, 0))  # succeeded, bound 0.0.0.0:0
HANDSHAKE_TIMEOUT = 10.0
REPORT_EVERY = 0.1  # seconds between `held N` lines while the count changes
BACKLOG = 65535


class Holder:
    def __init__(self) -> None:
        self.held = 0
        self.reported = -1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                _ver, nmethods = await reader.readexactly(2)
                await reader.readexactly(nmethods)
                writer.write(bytes((VER, NO_AUTH)))
                _ver, cmd, _rsv, atyp = await reader.readexactly(4)
                size = ATYP_LEN.get(atyp) or (await reader.readexactly(1))[0]
                await reader.readexactly(size + 2)
                if cmd != CMD_CONNECT:
                    return
                writer.write(REPLY_OK)
                await writer.drain()
            answered = True
            self.held += 1
            while await reader.read(4096):  # hold until the client goes away
                pass
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            if answered:
                self.held -= 1
            writer.close()

    async def report(self) -> None:
        while True:
            if self.held != self.reported:
                self.reported = self.held
                print(f"held {self.held}", flush=True)
            await asyncio.sleep(REPORT_EVERY)


async def serve(host: str, port: int) -> None:
    holder = Holder()
    server = await asyncio.start_server(holder.handle, host, port, backlog=BACKLOG)
    print(f"holdsocks listening on {host}:{port}", flush=True)
    async with server:
        await holder.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztun.bench.holdsocks", description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    ns = parser.parse_args(argv)
    host, _, port = ns.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
