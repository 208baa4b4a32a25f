"""The harness's own recording SOCKS5 server: a real asyncio server that logs every request.

Why our own server next to microsocks and danted: tests need to *see* what a tun2socks
asked the proxy for (command, target, address type, user) and what bytes went through it
(counts and sha256 each way), and they need a proxy that misbehaves on demand (refuse,
delay, drop after N bytes, close UDP associations). Real servers do neither.

Run it as a process inside a Host::

    python -m harness.peers.recording --listen 10.200.1.2:1080 --log /tmp/x/socks.jsonl \
        [--user U --password P] [--fault refuse|refuse:CODE|delay:MS|drop-after:N|close-udp[:N]]
        [--map 192.0.2.0/24=127.0.0.1 ...] [--unreachable 198.51.100.0/24 ...]

It prints ``listening on ADDR:PORT`` on stdout once the socket is bound (the readiness line)
and writes one JSON object per line to the log, flushed per line, so a test can read the
log while the server is still running. Event kinds (``"event"`` key):

``listening``  the bound address.
``greeting``   no acceptable method (the methods the client offered).
``auth``       RFC 1929 attempt: ``user``, ``ok``.
``request``    a request and the reply sent: ``client``, ``command``, ``target``
               (host/port/atyp), ``user``, ``reply``, ``reply_name``, ``bound``.
``close``      end of a CONNECT relay or UDP association: ``bytes_to_target``,
               ``bytes_from_target``, ``sha256_to_target``, ``sha256_from_target``, ``end``.
``udp``        one relayed datagram: ``dir`` (to_target/from_target), ``target``, ``len``,
               ``sha256``.
``udp_drop``   a client datagram not relayed, with ``reason``.
``error``      a protocol error from the client, with ``reason``.

Address map (the single-host topology): ``--map CIDR=ADDR`` sends a request for any target
in CIDR to ADDR instead (same port), and ``--unreachable CIDR`` refuses targets in CIDR with
"host unreachable" (4) unless a map names them. The log keeps the target *as asked* (plus
``dialled``), and a UDP reply from a mapped address is sent to the client as coming from
the address the client asked for, with the port it really came from -- so a tun2socks sees
documentation addresses that exist nowhere behave like real hosts.

"to_target" is client -> target, "from_target" is target -> client. Every event has ``id``
(one per accepted TCP connection) and ``time`` (UNIX seconds).

ProxyFaults (repeatable ``--fault``):
``refuse[:CODE]``  answer every request with reply CODE (default 5, connection refused).
``delay:MS``       wait MS milliseconds before answering each request.
``drop-after:N``   reset both connections of a CONNECT once N bytes (both directions added)
                   have been relayed; exactly N bytes get through.
``close-udp[:N]``  tear a UDP association down (control connection and relay socket) after
                   N datagrams have been relayed to targets (default 0: right after the reply).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import itertools
import json
import signal
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from harness.peers.socks5_wire import (
    AUTH_VERSION,
    SOCKS_VERSION,
    Address,
    AddrType,
    Command,
    Method,
    Reply,
    Socks5Error,
    command_name,
    decode_address,
    decode_udp_datagram,
    encode_reply,
    encode_udp_datagram,
    reply_name,
)
from ztun.servers.socks5 import IPNetwork, Mapping, mapped, parse_mapping

RELAY_CHUNK = 256 * 1024
HANDSHAKE_TIMEOUT = 30.0  # seconds a client may take to finish greeting/auth/request
DEFAULT_CONNECT_TIMEOUT = 10.0
SEND_QUEUE_POLL = 0.005  # seconds between SIOCOUTQ polls before a deliberate reset
SEND_QUEUE_DEADLINE = 2.0
MAX_UDP_DATAGRAM = 65535
READY_LINE = "listening on"
LISTEN_BACKLOG = 4096
"""Pending connections the listener queues (asyncio's default, 100, drops the SYNs of a
burst of new flows: the proxy, not the tun2socks, would then be measured)."""
OPEN_FILES = 65536
"""Descriptors the server process asks for: a UDP association holds three (control
connection, relay socket, outward socket), so 1000 flows need more than the usual 1024."""

_ERRNO_REPLY = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.NOT_ALLOWED,
    errno.EPERM: Reply.NOT_ALLOWED,
}


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class ProxyFaults:
    """Misbehaviours to inject; the default is a well-behaved server."""

    refuse: Reply | int | None = None
    delay_ms: int = 0
    drop_after: int | None = None
    close_udp_after: int | None = None

    @classmethod
    def parse(cls, specs: Iterable[str]) -> ProxyFaults:
        """Parse ``--fault`` values; ValueError names the bad one and the accepted forms."""
        values: dict[str, Any] = {}
        for spec in specs:
            name, _, arg = spec.partition(":")
            try:
                if name == "refuse":
                    values["refuse"] = int(arg, 0) if arg else Reply.CONNECTION_REFUSED
                elif name == "delay":
                    values["delay_ms"] = int(arg)
                elif name == "drop-after":
                    values["drop_after"] = int(arg)
                elif name == "close-udp":
                    values["close_udp_after"] = int(arg) if arg else 0
                else:
                    raise ValueError(name)
            except ValueError:
                raise ValueError(
                    f"bad --fault {spec!r}: expected refuse[:CODE], delay:MS, drop-after:N "
                    "or close-udp[:N]"
                ) from None
        return cls(**values)


# --------------------------------------------------------------------------- address map


@dataclass(frozen=True, slots=True)
class AddressMap:
    """Where a target address is dialled: mapped, refused, or as it is (see module doc).

    The map itself is ztun's own test server's (``ztun.servers.socks5``: same ``--map``
    syntax and first-match rule); what is added here is the unreachable rest.
    """

    mapped: Mapping = ()
    unreachable: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, maps: Iterable[str], unreachable: Iterable[str]) -> AddressMap:
        """``CIDR=ADDR`` specs and CIDRs; ValueError names the bad one."""
        nets = []
        for cidr in unreachable:
            try:
                nets.append(ipaddress.ip_network(cidr))
            except ValueError:
                raise ValueError(f"bad --unreachable {cidr!r}: expected a CIDR") from None
        return cls(tuple(parse_mapping(spec) for spec in maps), tuple(nets))

    def dial(self, host: str) -> str | None:
        """The address to dial for ``host`` (a name passes through), or None: unreachable."""
        target = mapped(host, self.mapped)
        if target != host:
            return target
        with contextlib.suppress(ValueError):
            if any(ipaddress.ip_address(host) in net for net in self.unreachable):
                return None
        return host


# --------------------------------------------------------------------------- log


class EventLog:
    """JSON-lines event log, flushed per line so readers never see half a record."""

    def __init__(self, path: Path | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None
        # In-process readers (tests running the server on a thread) await writes here.
        self._written = threading.Condition()

    def write(self, event: str, conn_id: int, **fields: Any) -> None:
        record = {"event": event, "id": conn_id, "time": time.time(), **fields}
        with self._written:
            self.events.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record, sort_keys=True) + "\n")
                self._file.flush()
            self._written.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds (re-checked after every write) or `timeout`."""
        with self._written:
            return self._written.wait_for(predicate, timeout)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Direction:
    """Byte count and running sha256 of one direction of a relay."""

    count: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    datagrams: int = 0

    def update(self, data: bytes) -> None:
        self.count += len(data)
        self.datagrams += 1
        self.digest.update(data)

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())


@dataclass(frozen=True, slots=True)
class UdpTargetStats:
    """What went to and came back from one UDP target within one association.

    The sha256 fields hash the datagram payloads concatenated in arrival order, so a test
    that sent payloads p1, p2 compares with ``sha256(p1 + p2)``.
    """

    target: str
    datagrams_to_target: int
    bytes_to_target: int
    sha256_to_target: str
    datagrams_from_target: int
    bytes_from_target: int
    sha256_from_target: str


@dataclass(frozen=True, slots=True)
class Socks5Request:
    """One request as the recording server saw it (built from the JSONL log)."""

    id: int
    time: float
    client: str
    command: str
    target_host: str
    target_port: int
    target_atyp: str
    user: str | None
    reply: int
    reply_name: str
    bound: str | None
    closed: bool
    end: str | None
    bytes_to_target: int
    bytes_from_target: int
    sha256_to_target: str | None
    sha256_from_target: str | None
    udp: dict[str, UdpTargetStats]

    @property
    def target(self) -> str:
        """``host:port`` (``[v6]:port``) as the client asked for it."""
        if self.target_atyp == "ipv6":
            return f"[{self.target_host}]:{self.target_port}"
        return f"{self.target_host}:{self.target_port}"

    @property
    def succeeded(self) -> bool:
        return self.reply == Reply.SUCCEEDED


def load_requests(events: Iterable[dict[str, Any]]) -> list[Socks5Request]:
    """Fold raw log events into one :class:`Socks5Request` per request, in log order."""
    requests: dict[int, dict[str, Any]] = {}
    udp: dict[int, dict[str, tuple[Direction, Direction]]] = {}
    for ev in events:
        kind, conn = ev.get("event"), ev.get("id")
        if not isinstance(conn, int):
            continue
        if kind == "request":
            tgt = ev["target"]
            requests[conn] = {
                "id": conn,
                "time": ev["time"],
                "client": ev["client"],
                "command": ev["command"],
                "target_host": tgt["host"],
                "target_port": tgt["port"],
                "target_atyp": tgt["atyp"],
                "user": ev.get("user"),
                "reply": ev["reply"],
                "reply_name": ev["reply_name"],
                "bound": ev.get("bound"),
                "closed": ev["reply"] != Reply.SUCCEEDED,
                "end": None if ev["reply"] == Reply.SUCCEEDED else "refused",
                "bytes_to_target": 0,
                "bytes_from_target": 0,
                "sha256_to_target": None,
                "sha256_from_target": None,
            }
        elif kind == "close" and conn in requests:
            requests[conn].update(
                closed=True,
                end=ev.get("end"),
                bytes_to_target=ev.get("bytes_to_target", 0),
                bytes_from_target=ev.get("bytes_from_target", 0),
                sha256_to_target=ev.get("sha256_to_target"),
                sha256_from_target=ev.get("sha256_from_target"),
            )
        elif kind == "udp" and conn in requests:
            up, down = udp.setdefault(conn, {}).setdefault(ev["target"], (Direction(), Direction()))
            payload_hex = ev.get("payload_hex")
            direction = up if ev["dir"] == "to_target" else down
            if payload_hex is not None:
                direction.update(bytes.fromhex(payload_hex))
            else:  # payload not logged: count only; the hash becomes unavailable
                direction.count += ev["len"]
                direction.datagrams += 1
    result = []
    for conn, fields in requests.items():
        stats = {
            name: UdpTargetStats(
                target=name,
                datagrams_to_target=up.datagrams,
                bytes_to_target=up.count,
                sha256_to_target=up.sha256,
                datagrams_from_target=down.datagrams,
                bytes_from_target=down.count,
                sha256_from_target=down.sha256,
            )
            for name, (up, down) in udp.get(conn, {}).items()
        }
        result.append(Socks5Request(udp=stats, **fields))
    return result


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Parse the log; a torn last line (server still writing) is ignored, not an error."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


# --------------------------------------------------------------------------- helpers


def format_sockaddr(addr: Any) -> str:
    """``ip:port`` or ``[ip6]:port`` from a socket address tuple."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_ip(a: str, b: str) -> bool:
    """Compare IPs, treating ``::ffff:a.b.c.d`` as ``a.b.c.d`` (dual-stack sockets)."""
    try:
        ia, ib = ipaddress.ip_address(a.split("%")[0]), ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a == b
    if isinstance(ia, ipaddress.IPv6Address) and ia.ipv4_mapped:
        ia = ia.ipv4_mapped
    if isinstance(ib, ipaddress.IPv6Address) and ib.ipv4_mapped:
        ib = ib.ipv4_mapped
    return ia == ib


def _reply_for(exc: BaseException) -> Reply:
    if isinstance(exc, TimeoutError):
        return Reply.TTL_EXPIRED
    if isinstance(exc, socket.gaierror):
        return Reply.HOST_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REPLY:
        return _ERRNO_REPLY[exc.errno]
    return Reply.GENERAL_FAILURE


def _set_reset_on_close(writer: asyncio.StreamWriter) -> None:
    """SO_LINGER 0: the next close sends RST instead of FIN (a real "dropped" connection)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _wait_send_queue_empty(writer: asyncio.StreamWriter) -> None:
    """Wait (bounded) until the kernel has sent everything, so a reset loses no bytes.

    No event tells us the send queue drained, so this polls SIOCOUTQ (== TIOCOUTQ) in small
    steps, for at most SEND_QUEUE_DEADLINE seconds.
    """
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    deadline = time.monotonic() + SEND_QUEUE_DEADLINE
    buf = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
        except OSError:
            return
        if struct.unpack("i", buf)[0] == 0:
            return
        await asyncio.sleep(SEND_QUEUE_POLL)  # noqa: sleep-ok - a send queue has no drain event


class _DropAfter(Exception):
    """Raised by a pump when the drop-after budget is spent."""


@dataclass(slots=True)
class _Budget:
    remaining: int

    def take(self, wanted: int) -> int:
        granted = min(wanted, self.remaining)
        self.remaining -= granted
        return granted


# --------------------------------------------------------------------------- UDP


class _UdpEndpoint(asyncio.DatagramProtocol):
    """Forwards datagrams to a callback; a closed transport just stops delivery."""

    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: nothing to relay
        pass


class _UdpAssociation:
    """One UDP ASSOCIATE: a relay socket facing the client and one socket per family outward."""

    def __init__(
        self,
        server: RecordingServer,
        conn_id: int,
        client_ip: str,
        finished: asyncio.Event,
    ) -> None:
        self.server = server
        self.conn_id = conn_id
        self.client_ip = client_ip
        self.client_addr: Any = None
        self.relay: asyncio.DatagramTransport | None = None
        self.outward: dict[int, asyncio.DatagramTransport] = {}
        self.requested_name: dict[tuple[str, int], str] = {}
        self.asked_ip: dict[str, str] = {}
        """Dialled address -> the address the client asked for (mapped targets only)."""
        self.to_target = Direction()
        self.from_target = Direction()
        self.finished = finished
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, local_ip: str) -> Address:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpEndpoint(self._from_client), local_addr=(local_ip, 0)
        )
        self.relay = transport
        bound = transport.get_extra_info("sockname")
        return Address.from_host(bound[0], bound[1])

    def _log(self, event: str, **fields: Any) -> None:
        self.server.log.write(event, self.conn_id, **fields)

    def _from_client(self, data: bytes, addr: Any) -> None:
        # RFC 1928 sec. 7: accept datagrams only from the client that asked. We compare the
        # IP only: clients often declare 0.0.0.0:0 or (sing-box) [::1]:0 in the request.
        if not _same_ip(addr[0], self.client_ip):
            self._log("udp_drop", reason="foreign source", source=format_sockaddr(addr))
            return
        try:
            dgram = decode_udp_datagram(data)
        except Socks5Error as exc:
            self._log("udp_drop", reason=str(exc), source=format_sockaddr(addr))
            return
        if dgram.frag != 0:
            self._log("udp_drop", reason=f"fragment {dgram.frag} (not supported)")
            return
        self.client_addr = addr
        task = asyncio.get_running_loop().create_task(self._send_out(dgram.target, dgram.payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_out(self, target: Address, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        dial = self.server.address_map.dial(target.host)
        if dial is None:
            self._log("udp_drop", reason=f"unreachable {target}")
            return
        try:
            infos = await loop.getaddrinfo(dial, target.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            self._log("udp_drop", reason=f"resolve {target}: {exc}")
            return
        family, _, _, _, sockaddr = infos[0]
        out = self.outward.get(family)
        if out is None:
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            out, _ = await loop.create_datagram_endpoint(
                lambda: _UdpEndpoint(self._from_target), local_addr=(wildcard, 0), family=family
            )
            self.outward[family] = out
        self.requested_name[(str(sockaddr[0]), int(sockaddr[1]))] = str(target)
        if dial != target.host:
            self.asked_ip[str(sockaddr[0])] = target.host
        self.to_target.update(payload)
        self._log(
            "udp",
            dir="to_target",
            target=str(target),
            len=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            payload_hex=payload.hex() if self.server.log_payloads else None,
        )
        out.sendto(payload, sockaddr)
        limit = self.server.faults.close_udp_after
        if limit is not None and self.to_target.datagrams >= limit:
            self.finished.set()

    def _from_target(self, data: bytes, addr: Any) -> None:
        if self.relay is None or self.client_addr is None:
            return
        # A mapped target answers as the address the client asked for, from whatever port
        # it really used (a reply from another port is the endpoint-independent case).
        source = Address.from_host(self.asked_ip.get(addr[0], addr[0]), addr[1])
        name = self.requested_name.get((addr[0], addr[1]), str(source))
        self.from_target.update(data)
        self._log(
            "udp",
            dir="from_target",
            target=name,
            source=str(source),
            len=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            payload_hex=data.hex() if self.server.log_payloads else None,
        )
        self.relay.sendto(encode_udp_datagram(source, data), self.client_addr)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.relay is not None:
            self.relay.close()
        for out in self.outward.values():
            out.close()


# --------------------------------------------------------------------------- server


class RecordingServer:
    """A SOCKS5 server (CONNECT, UDP ASSOCIATE, RFC 1929) that records what it relays.

    Usable in-process (``await server.start()``; ``server.requests()``) or through the
    command line inside a Host (see the module docstring).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        log: EventLog | None = None,
        username: str | None = None,
        password: str | None = None,
        faults: ProxyFaults | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        log_payloads: bool = True,
        address_map: AddressMap | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both --user and --password, or neither")
        self.host = host
        self.port = port
        self.log = log or EventLog()
        self.username = username
        self.password = password
        self.faults = faults or ProxyFaults()
        self.connect_timeout = connect_timeout
        self.address_map = address_map or AddressMap()
        # Payload hex makes UDP hashes per target computable from the log; datagrams in
        # tests are small, so the log stays small.
        self.log_payloads = log_payloads
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=LISTEN_BACKLOG
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.log.write("listening", 0, address=self.address)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def requests(self) -> list[Socks5Request]:
        return load_requests(self.log.events)

    # -- per connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn_id = next(self._ids)
        client = format_sockaddr(writer.get_extra_info("peername"))
        try:
            await self._serve(conn_id, client, reader, writer)
        except asyncio.IncompleteReadError:
            self.log.write("error", conn_id, client=client, reason="client closed mid-handshake")
        except TimeoutError:
            self.log.write("error", conn_id, client=client, reason="handshake timeout")
        except (ConnectionError, OSError) as exc:
            self.log.write("error", conn_id, client=client, reason=f"socket error: {exc}")
        except Exception as exc:  # a harness bug must show in the log, not vanish
            self.log.write(
                "error",
                conn_id,
                client=client,
                reason=f"internal error: {type(exc).__name__}: {exc}",
            )
            raise
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def _serve(
        self,
        conn_id: int,
        client: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            authed = await self._negotiate(conn_id, client, reader, writer)
            if authed is False:
                return
            user = authed if isinstance(authed, str) else None
            try:
                command, target = await self._read_request(reader)
            except Socks5Error as exc:
                self.log.write("error", conn_id, client=client, reason=str(exc))
                writer.write(encode_reply(exc.reply))
                await writer.drain()
                return
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)  # noqa: sleep-ok - the injected delay itself
        record = {
            "client": client,
            "command": command_name(command),
            "user": user,
            "target": {"host": target.host, "port": target.port, "atyp": target.atyp.name.lower()},
        }
        if self.faults.refuse is not None:
            await self._answer(conn_id, writer, int(self.faults.refuse), None, record)
            return
        if command == Command.CONNECT:
            await self._connect(conn_id, reader, writer, target, record)
        elif command == Command.UDP_ASSOCIATE:
            await self._udp_associate(conn_id, reader, writer, record)
        else:
            await self._answer(conn_id, writer, Reply.COMMAND_NOT_SUPPORTED, None, record)

    async def _answer(
        self,
        conn_id: int,
        writer: asyncio.StreamWriter,
        reply: int,
        bound: Address | None,
        record: dict[str, Any],
    ) -> None:
        # Log first: a client that reads the reply and then the log must find the record.
        self.log.write(
            "request",
            conn_id,
            reply=reply,
            reply_name=reply_name(reply),
            bound=str(bound) if bound else None,
            **record,
        )
        writer.write(encode_reply(reply, bound))
        await writer.drain()

    async def _negotiate(
        self,
        conn_id: int,
        client: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> str | bool:
        """Greeting and, if configured, RFC 1929. Returns the user, True, or False to hang up."""
        version, count = await reader.readexactly(2)
        if version != SOCKS_VERSION:
            self.log.write("error", conn_id, client=client, reason=f"version {version}")
            return False
        methods = list(await reader.readexactly(count))
        wanted = Method.USERNAME_PASSWORD if self.username is not None else Method.NO_AUTH
        if wanted not in methods:
            self.log.write(
                "greeting", conn_id, client=client, methods=methods, chosen=Method.NO_ACCEPTABLE
            )
            writer.write(bytes([SOCKS_VERSION, Method.NO_ACCEPTABLE]))
            await writer.drain()
            return False
        writer.write(bytes([SOCKS_VERSION, wanted]))
        await writer.drain()
        if wanted == Method.NO_AUTH:
            return True
        version, ulen = await reader.readexactly(2)
        user = (await reader.readexactly(ulen)).decode("utf-8", errors="replace")
        (plen,) = await reader.readexactly(1)
        password = (await reader.readexactly(plen)).decode("utf-8", errors="replace")
        ok = version == AUTH_VERSION and user == self.username and password == self.password
        self.log.write("auth", conn_id, client=client, user=user, ok=ok)
        writer.write(bytes([AUTH_VERSION, 0 if ok else 1]))
        await writer.drain()
        return user if ok else False

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[int, Address]:
        version, command, _rsv, atyp = await reader.readexactly(4)
        if version != SOCKS_VERSION:
            raise Socks5Error(f"request version {version}")
        if atyp == AddrType.IPV4:
            rest = await reader.readexactly(4 + 2)
        elif atyp == AddrType.IPV6:
            rest = await reader.readexactly(16 + 2)
        elif atyp == AddrType.DOMAIN:
            length = await reader.readexactly(1)
            rest = length + await reader.readexactly(length[0] + 2)
        else:
            raise Socks5Error(
                f"unknown address type 0x{atyp:02x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED
            )
        target, _ = decode_address(bytes([atyp]) + rest)
        return command, target

    # -- CONNECT

    async def _connect(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: Address,
        record: dict[str, Any],
    ) -> None:
        dial = self.address_map.dial(target.host)
        if dial is None:
            await self._answer(conn_id, writer, Reply.HOST_UNREACHABLE, None, record)
            return
        if dial != target.host:
            record["dialled"] = dial
        try:
            async with asyncio.timeout(self.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(dial, target.port)
        except (OSError, TimeoutError) as exc:
            await self._answer(conn_id, writer, _reply_for(exc), None, record)
            return
        local = up_writer.get_extra_info("sockname")
        await self._answer(
            conn_id, writer, Reply.SUCCEEDED, Address.from_host(local[0], local[1]), record
        )
        to_target, from_target = Direction(), Direction()
        budget = _Budget(self.faults.drop_after) if self.faults.drop_after is not None else None
        end = "eof"
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, to_target, budget)),
            asyncio.ensure_future(self._pump(up_reader, writer, from_target, budget)),
        ]
        try:
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if t.exception() is not None]
            if failed:
                err = failed[0].exception()
                end = "drop-after" if isinstance(err, _DropAfter) else f"reset ({err})"
                for task in pending:
                    task.cancel()
                if isinstance(err, _DropAfter):
                    await _wait_send_queue_empty(writer)
                    await _wait_send_queue_empty(up_writer)
                for w in (writer, up_writer):
                    _set_reset_on_close(w)
        finally:
            for task in pumps:
                task.cancel()
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
            self.log.write(
                "close",
                conn_id,
                end=end,
                bytes_to_target=to_target.count,
                bytes_from_target=from_target.count,
                sha256_to_target=to_target.sha256,
                sha256_from_target=from_target.sha256,
            )

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        stats: Direction,
        budget: _Budget | None,
    ) -> None:
        """Copy until EOF, then half-close ``dst`` (so FIN travels end to end)."""
        while True:
            data = await src.read(RELAY_CHUNK)
            if not data:
                if dst.can_write_eof() and not dst.is_closing():
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                return
            exhausted = False
            if budget is not None:
                granted = budget.take(len(data))
                exhausted = granted < len(data) or budget.remaining == 0
                data = data[:granted]
            if data:
                stats.update(data)
                dst.write(data)
                await dst.drain()
            if exhausted:
                raise _DropAfter()

    # -- UDP ASSOCIATE

    async def _udp_associate(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: dict[str, Any],
    ) -> None:
        local_ip = writer.get_extra_info("sockname")[0]
        peer_ip = writer.get_extra_info("peername")[0]
        finished = asyncio.Event()
        assoc = _UdpAssociation(self, conn_id, peer_ip, finished)
        try:
            bound = await assoc.open(local_ip)
        except OSError as exc:
            await self._answer(conn_id, writer, _reply_for(exc), None, record)
            return
        record["declared_client"] = record["target"]
        await self._answer(conn_id, writer, Reply.SUCCEEDED, bound, record)
        if self.faults.close_udp_after == 0:
            finished.set()
        end = "control closed"
        watch = asyncio.ensure_future(self._drain_until_eof(reader))
        fault = asyncio.ensure_future(finished.wait())
        try:
            done, _ = await asyncio.wait([watch, fault], return_when=asyncio.FIRST_COMPLETED)
            if fault in done:
                end = "close-udp"
        finally:
            watch.cancel()
            fault.cancel()
            assoc.close()
            self.log.write(
                "close",
                conn_id,
                end=end,
                bytes_to_target=assoc.to_target.count,
                bytes_from_target=assoc.from_target.count,
                sha256_to_target=assoc.to_target.sha256,
                sha256_from_target=assoc.from_target.sha256,
            )

    @staticmethod
    async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
        """The control connection carries nothing after the reply; its EOF ends the association."""
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(RELAY_CHUNK):
                pass


# --------------------------------------------------------------------------- CLI


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT or [V6]:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.peers.recording",
        description="Recording SOCKS5 server of the ztun harness (logs every request).",
    )
    parser.add_argument("--listen", type=parse_listen, required=True, metavar="ADDR:PORT")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC")
    parser.add_argument("--log", type=Path, metavar="FILE.jsonl")
    parser.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT)
    parser.add_argument(
        "--map", action="append", default=[], metavar="CIDR=ADDR", help="dial ADDR for CIDR"
    )
    parser.add_argument(
        "--unreachable", action="append", default=[], metavar="CIDR", help="refuse CIDR"
    )
    parser.add_argument(
        "--no-payloads",
        action="store_true",
        help="do not log UDP payload hex (per-target UDP hashes then unavailable)",
    )
    return parser


async def _run(args: argparse.Namespace) -> int:
    host, port = args.listen
    log = EventLog(args.log)
    server = RecordingServer(
        host,
        port,
        log=log,
        username=args.user,
        password=args.password,
        faults=ProxyFaults.parse(args.fault),
        connect_timeout=args.connect_timeout,
        log_payloads=not args.no_payloads,
        address_map=AddressMap.parse(args.map, args.unreachable),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"{READY_LINE} {server.address}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        ProxyFaults.parse(args.fault)
        AddressMap.parse(args.map, args.unreachable)
        if (args.user is None) != (args.password is None):
            raise ValueError("give both --user and --password, or neither")
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    _raise_open_files_limit(OPEN_FILES)
    return asyncio.run(_run(args))


def _raise_open_files_limit(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit; POSIX)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


if __name__ == "__main__":
    sys.exit(main())
