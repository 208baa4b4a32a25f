"""Remote DNS against a real resolver: dnsmasq on loopback, queried over TCP with the
handler's framing, IDs and cache -- the same bytes the engine sends through the proxy."""

from __future__ import annotations

import select
import socket
import subprocess
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from harness.skips import require_tool
from ztun.dns import Answer, DnsHandler, DnsMode, Forward, TcpDnsDeframer
from ztun.tools import tool

TIMEOUT = 10.0
ADDRESS = "192.0.2.77"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dnsmasq() -> Iterator[int]:
    require_tool("dnsmasq")
    port = _free_port()
    proc = subprocess.Popen(
        [
            tool("dnsmasq"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            f"--address=/interop.test/{ADDRESS}",
            "--local-ttl=60",
            "--log-facility=-",
            "--pid-file=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        while "started" not in seen:  # dnsmasq logs "started, version ..." once listening
            ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
            line = proc.stderr.readline() if ready else ""
            if not line:
                pytest.fail(f"dnsmasq did not start: {seen}")
            seen += line
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def exchange(port: int, fwd: Forward) -> bytes:
    """Send one framed query on a fresh TCP connection and read the framed reply."""
    deframer = TcpDnsDeframer()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(fwd.wire)
        while True:
            chunk = conn.recv(4096)
            assert chunk, "resolver closed the connection without answering"
            messages = deframer.feed(chunk)
            if messages:
                return messages[0]


def test_remote_mode_round_trip_through_real_resolver(dnsmasq: int) -> None:
    h = DnsHandler(DnsMode.REMOTE, upstream=("127.0.0.1", dnsmasq))
    q = DNSRecord.question("www.Interop.test", "A")
    q.header.id = 0xABCD
    fwd = h.handle_query(bytes(q.pack()), now=0.0)
    assert isinstance(fwd, Forward)
    got = h.handle_reply(exchange(dnsmasq, fwd), now=0.1)
    assert got is not None
    answer = DNSRecord.parse(got[1])
    assert answer.header.id == 0xABCD and answer.header.rcode == RCODE.NOERROR
    assert [(rr.rtype, str(rr.rdata)) for rr in answer.rr] == [(QTYPE.A, ADDRESS)]
    # the cache answers the next client without another upstream round trip
    again = h.handle_query(bytes(DNSRecord.question("www.interop.test").pack()), now=1.0)
    assert isinstance(again, Answer)
    assert str(DNSRecord.parse(again.payload).rr[0].rdata) == ADDRESS
