"""The bench the golden scenarios run on: the default topology, danted, ztun in the client.

    client [app, ztun, TUN zt0] --veth-- proxy [danted :1080] --veth-- server [echo, dnsmasq]

Where nondeterminism is removed at its source, and how:

* crafted packets come from a generator seeded by the *scenario name*, not the run seed:
  the same bytes every run, on every machine (ports, ISNs, TSvals, IP ids, payloads);
* app payloads are fixed bytes; the DNS query has a fixed id;
* the harness turns offloads off on the veths (full checksums, no GSO on the link);
* captures are per interface (never ``-i any``), classic pcap, raw IP link type on the
  TUN, with a filter that leaves out what the kernel does on its own schedule
  (IPv6 router solicitations and MLD on the TUN, ARP/ND on the link);
* lock-step: crafted packets are followed by a barrier (an echo request ztun answers;
  ztun handles the TUN in order, so any answer to the crafted packet is captured
  before the barrier's reply), and a scenario ends only once the client's TCP sockets
  have settled (no connection half-way through its handshake or its close), so the last
  ACK is in the capture.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.capture import Capture, capture
from harness.hosts.netns import NetnsHost
from harness.impls import RunningImpl
from harness.packets import icmp_echo, send_raw
from harness.topo import Topology
from ztun.tools import tool

DEVICE = "zt0"
SOCKS_PORT = 1080
ECHO_PORT = 5002
UDP_PORT = 5003
CLOSED_PORT = 5009
"""Nothing listens here on the server: the refused-connection scenario."""
DNS_PORT = 53
DNS_NAME, DNS_ANSWER = "probe.ztun.test", "10.9.8.7"

TUN_V4, TUN_V6 = "172.19.0.1", "fdfe:dcba:9876::1"
"""ztun's default TUN addresses: the client's apps send from these."""

SNAPLEN = 2048
"""Whole packets (MTU 1500 plus headers), so checksums verify and payload hashes are whole."""

TUN_FILTER = "not ip6 multicast"
"""On the TUN: everything but the kernel's own IPv6 multicast (router solicitations, MLD),
which it sends on a timer after the device comes up."""
LINK_FILTER = "tcp or udp"
"""On the client-proxy link: the SOCKS5 conversation; no ARP/ND, whose timing follows the
neighbour cache, not the scenario."""

BARRIER_IDENT = 0x7A74
ICMP_ECHO_REPLY = 0
APP_TIMEOUT = 10.0
"""Seconds an app operation may take (a connect, a read) before the scenario moves on."""
SETTLE_TIMEOUT = 5.0
"""Seconds the client's TCP sockets get to finish their handshakes and closes."""
SETTLE_POLL_MIN, SETTLE_POLL_MAX = 0.01, 0.2

# /proc/net/tcp states (include/net/tcp_states.h) that mean "a segment is still due".
_UNSETTLED = {
    "02": "SYN-SENT",
    "03": "SYN-RECV",
    "04": "FIN-WAIT-1",
    "05": "FIN-WAIT-2",
    "08": "CLOSE-WAIT",
    "09": "LAST-ACK",
    "0B": "CLOSING",
}
_STATE_FIELD = 3

Where = Literal["tun", "link"]


def scenario_rng(name: str) -> random.Random:
    """The generator for a scenario's crafted bytes: fixed per scenario, not per run."""
    return random.Random(f"ztun golden scenario {name}")


@dataclass
class Bench:
    """The running path plus what scenarios need to drive and observe it."""

    topo: Topology
    ztun: RunningImpl
    server_v4: str
    server_v6: str
    proxy_v4: str
    notes: list[str] = field(default_factory=list)
    """What happened that a golden cannot show (an app read that timed out...)."""

    @property
    def client(self) -> NetnsHost:
        return self.topo.client

    # -- captures ---------------------------------------------------------------------

    def capture(self, where: Where, name: str) -> contextlib.AbstractContextManager[Capture]:
        if where == "tun":
            return capture(self.client, DEVICE, TUN_FILTER, snaplen=SNAPLEN, name=name)
        iface = self.topo.iface("client", "proxy")
        return capture(self.client, iface, LINK_FILTER, snaplen=SNAPLEN, name=name)

    # -- apps in the client -----------------------------------------------------------

    def tcp(self, *, v6: bool = False) -> socket.socket:
        sock = self.client.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(APP_TIMEOUT)
        return sock

    def udp(self, *, v6: bool = False) -> socket.socket:
        sock = self.client.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(APP_TIMEOUT)
        return sock

    def server(self, *, v6: bool = False) -> str:
        return self.server_v6 if v6 else self.server_v4

    # -- crafted packets into the TUN ---------------------------------------------------

    def inject(self, packet: object) -> None:
        """Into the TUN as if an app sent it (AF_PACKET: bytes untouched, bad ones too)."""
        send_raw(self.client, packet, iface=DEVICE)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def barrier(self) -> Iterator[Barrier]:
        sock = self.client.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.settimeout(APP_TIMEOUT)
        try:
            yield Barrier(self, sock)
        finally:
            sock.close()

    # -- the end of a scenario ----------------------------------------------------------

    def unsettled(self) -> list[str]:
        """Client TCP sockets that still owe a segment (by state name)."""
        text = self.client.run(
            [tool("cat"), "/proc/net/tcp", "/proc/net/tcp6"], timeout=10.0
        ).stdout
        states = [
            line.split()[_STATE_FIELD]
            for line in text.splitlines()[1:]
            if len(line.split()) > _STATE_FIELD and ":" in line.split()[0]
        ]
        return [_UNSETTLED[s] for s in states if s in _UNSETTLED]

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Await the client's TCP sockets leaving every transitional state (bounded)."""
        deadline = time.monotonic() + timeout
        interval = SETTLE_POLL_MIN
        while True:
            pending = self.unsettled()
            if not pending:
                return True
            if time.monotonic() >= deadline:
                self.notes.append(f"not settled after {timeout:g}s: {', '.join(pending)}")
                return False
            # A probe, not a fixed sleep: /proc/net/tcp has no change notification.
            time.sleep(interval)  # noqa: sleep-ok - bounded probe, /proc/net/tcp has no event
            interval = min(interval * 2, SETTLE_POLL_MAX)


@dataclass
class Barrier:
    """An ICMP echo ztun answers itself: once its reply is back, ztun has handled (and
    the capture has seen) every packet injected before it."""

    bench: Bench
    sock: socket.socket
    seq: int = 0

    def __call__(self) -> None:
        self.seq += 1
        probe = icmp_echo(
            random.Random(self.seq),
            TUN_V4,
            self.bench.server_v4,
            ident=BARRIER_IDENT,
            seq=self.seq,
            payload=b"barrier",
        )
        self.bench.inject(probe)
        deadline = time.monotonic() + APP_TIMEOUT
        try:
            while time.monotonic() < deadline:
                data = self.sock.recv(65535)  # every ICMP message the client receives
                header = (data[0] & 0x0F) * 4
                ident, seq = struct.unpack("!HH", data[header + 4 : header + 8])
                if data[header] == ICMP_ECHO_REPLY and (ident, seq) == (BARRIER_IDENT, self.seq):
                    return
        except TimeoutError:
            pass
        raise AssertionError(f"ztun did not answer barrier echo {self.seq} within {APP_TIMEOUT}s")


BenchFactory = Callable[..., Bench]
"""The ``bench_factory`` fixture: ``bench_factory(scenario, binary=None) -> Bench``."""


def broken_launcher(folder: Path, mode: str, python: str, wrapper: Path) -> Path:
    """An executable that runs ztun's CLI with one deliberate fault (see broken_ztun.py)."""
    script = folder / f"ztun-broken-{mode}"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f'#!/bin/sh\nZTUN_BROKEN={mode} exec {python} {wrapper} "$@"\n')
    script.chmod(0o755)
    return script
