"""Helpers for the outbound netns tests: a private namespace, a loop inside it, servers.

How the client gets into the namespace: a namespace is a per-*thread* attribute in
Linux, so `NetnsLoop` starts one thread, `setns(2)`s it into the namespace (pyroute2's
`netns.setns`) and runs an event loop there. Every socket that loop opens - the
outbounds under test, the echo servers - is created in the namespace and stays there;
pytest's own thread never moves, so no failure can leave it in the wrong namespace
(unlike `pushns`/`popns` on the main thread). Executor threads the loop starts (for
getaddrinfo) are spawned from the loop thread and inherit its namespace too.

The servers are the real ones, started with `ip netns exec NS ...` (which execs in
place, so we hold their pid): microsocks (CONNECT, with and without username/password)
and danted (UDP ASSOCIATE). Everything listens on the namespace's loopback; fixed ports
are fine because the namespace is ours alone. One namespace per test module; it is
deleted in the fixture's finalizer, also on failure, and the deletion is verified.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from ztun.servers.danted import danted_config
from ztun.tools import tool

T = TypeVar("T")

CMD_TIMEOUT = 10.0  # any `ip` command
READY_TIMEOUT = 10.0  # a daemon starting to listen
READY_TICK = 0.02  # between looks at /proc/PID/net/tcp*: no event exists for "listening"
STOP_TIMEOUT = 5.0  # SIGTERM -> exit, before SIGKILL
RUN_TIMEOUT = 20.0  # one coroutine run on the namespace loop
LOG_TAIL = 2000

# Ports inside the private namespace.
ECHO_PORT = 7007
MICROSOCKS_PORT = 1080
MICROSOCKS_AUTH_PORT = 1081
DANTED_PORT = 1082
DANTED_SPARE_PORT = 1083  # a danted a test may kill
SING_BOX_PORT = 1084
DEAD_PORT = 1099  # nothing listens here
USER, PASSWORD = "ztun", "p@ss:w/rd"  # needs percent-encoding in a URL

_TCP_LISTEN = "0A"  # st column of /proc/net/tcp
_serial = itertools.count()


def binary(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package})")
    return path


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("ip"), *args], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=True
    )


# -- the namespace --------------------------------------------------------------------------


def create_netns() -> str:
    """A fresh namespace with loopback up (127.0.0.1 and ::1); skips unless root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace")
    binary("ip", "iproute2")
    name = f"ztob{os.getpid()}x{next(_serial)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str) -> None:
    pids = subprocess.run(
        [tool("ip"), "netns", "pids", name], capture_output=True, text=True, timeout=CMD_TIMEOUT
    ).stdout.split()
    for pid in pids:  # only processes inside our own namespace
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", name)
    left = ip("netns", "list").stdout.split()
    assert name not in left, f"namespace {name} still exists after deletion"


class NetnsLoop:
    """An asyncio event loop running on a thread that has entered the namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"loop@{netns}", daemon=True)
        self._thread.start()
        if not self._ready.wait(CMD_TIMEOUT):
            raise TimeoutError(f"event loop thread for {netns} did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        from pyroute2 import netns as pr_netns

        try:
            pr_netns.setns(self.netns, flags=0)  # flags=0: never create it by accident
            loop = asyncio.new_event_loop()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
        """Run `coro` on the namespace loop and return its result (or raise its error)."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own TimeoutError (the same class since 3.11)
                raise
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout:g}s") from None

    def close(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CMD_TIMEOUT)


# -- echo servers (on the namespace loop) ---------------------------------------------------


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.transport.sendto(data, addr)


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class EchoServers:
    """TCP and UDP echo on ECHO_PORT at 127.0.0.1 and ::1."""

    port: int
    closers: list[Any]


async def start_echo() -> EchoServers:
    loop = asyncio.get_running_loop()
    closers: list[Any] = []
    tcp = await asyncio.start_server(_tcp_echo, host=["127.0.0.1", "::1"], port=ECHO_PORT)
    closers.append(tcp)
    for host in ("127.0.0.1", "::1"):
        transport, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(host, ECHO_PORT))
        closers.append(transport)
    return EchoServers(ECHO_PORT, closers)


async def stop_echo(echo: EchoServers) -> None:
    for closer in echo.closers:
        closer.close()


# -- daemons --------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A server process inside the namespace; its output goes to `log_path`."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM the daemon's whole process group, then SIGKILL what is left.

        The group matters for danted: on SIGTERM its mother process exits but the child
        serving an active session lives on (a graceful drain), holding the session's TCP
        connection open.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM and not _group_alive(self.proc.pid):
                return
        self.proc.wait(STOP_TIMEOUT)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(pid: int, port: int, netns: str) -> bool:
    """Is `port` in LISTEN in `pid`'s namespace, and is that namespace already ours?

    Until `ip netns exec` has called setns(), /proc/PID/net shows the root namespace,
    where something unrelated may listen on the same port: check the inode first.
    """
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat(f"/run/netns/{netns}").st_ino:
            return False
        tables = [Path(f"/proc/{pid}/net/{t}").read_text() for t in ("tcp", "tcp6")]
    except FileNotFoundError:
        return False
    want = f":{port:04X}"
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == _TCP_LISTEN:
                return True
    return False


def start_daemon(netns: str, name: str, argv: list[str], port: int, log_dir: Path) -> Daemon:
    """Start argv in the namespace and return once it listens on `port` (or fail with its log)."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [tool("ip"), "netns", "exec", netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches forked children
        )
    daemon = Daemon(name, proc, log_path)
    deadline = READY_TIMEOUT
    while not _listening(proc.pid, port, netns):
        try:
            # Waiting for the exit event doubles as the tick between /proc looks.
            proc.wait(READY_TICK)
        except subprocess.TimeoutExpired:
            deadline -= READY_TICK
            if deadline > 0:
                continue
            daemon.stop()
            raise RuntimeError(
                f"{name} not listening on {port} after {READY_TIMEOUT:g}s:\n{daemon.log_tail()}"
            ) from None
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{daemon.log_tail()}")
    return daemon


def start_danted(netns: str, name: str, port: int, log_dir: Path) -> Daemon:
    danted = binary("danted", "dante-server")
    conf = log_dir / f"{name}.conf"
    conf.write_text(
        danted_config([("127.0.0.1", port), ("::1", port)], ["lo"], log="", rotation_by_route=False)
    )
    # -p: a private pid file, so parallel runs do not fight over /run/danted.pid.
    argv = [danted, "-f", str(conf), "-p", str(log_dir / f"{name}.pid")]
    return start_daemon(netns, name, argv, port, log_dir)
