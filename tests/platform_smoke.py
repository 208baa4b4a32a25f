"""ztun on a hosted macOS or Windows CI runner: TCP, UDP and ping through the TUN.

Run as root (macOS: ``sudo``) or Administrator (Windows), by the ``platform-run`` rows
of ``.github/workflows/ci.yml``, never on a developer's machine: it creates a TUN and
routes 198.51.100.0/24 (TEST-NET-2, RFC 5737: never a real destination) into it on the
host itself, which the Linux suite only ever does inside namespaces.  It refuses to run
on Linux.

The single-host topology, everything on the runner::

    client (this script) --198.51.100.10--> TUN --> ztun --SOCKS5--> 127.0.0.1:P
        built-in SOCKS5 server, --map 198.51.100.0/24=127.0.0.1 --> loopback targets:
        an HTTP server (a random blob, checked by SHA-256) and a UDP echo

ping is answered by ztun itself (ICMP echo in place).  After the checks ztun is stopped
-- SIGINT on macOS (a clean exit must restore routes and resolver); on Windows, where a
console signal cannot reach a child without a console of its own, it is killed, which is
the crash case -- and then ``ztun cleanup`` runs and the route to 198.51.100.10 must be
the host's own again, as ztun's own route lookups (PF_ROUTE RTM_GET / GetBestRoute2) see
it.  With ``--check-dns`` (macOS) the primary service's resolver must point into the TUN
while ztun runs with ``--dns hijack`` and hold its old servers again after.

This is the plain check of issue 14; the single-host conformance topology (issue 13)
replaces it by swapping this script for its own command in the workflow.
Prints ``platform smoke: N passed, N failed`` last; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import ipaddress
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

PREFIX = "198.51.100.0/24"
TARGET = "198.51.100.10"
TUN_ADDRESS = "172.19.0.1/30"
TUN_PEER = "172.19.0.2"  # the hairpin peer: where ztun points the resolver (--dns)
DEFAULT_DEVICE = {"darwin": "tun://utun9", "win32": "tun://ztun0"}
READY_TIMEOUT = 60.0  # ztun start, device, routes (Wintun installs its driver once)
STEP_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


@dataclass
class Results:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, name: str, step: Callable[[], str]) -> None:
        try:
            detail = step()
        except Exception as exc:  # a failed check is reported, the others still run
            self.failed.append(name)
            print(f"FAIL {name}: {exc!r}", flush=True)
        else:
            self.passed.append(name)
            print(f"ok   {name}: {detail}", flush=True)


def ztun_argv(device: str, proxy_port: int, *, dns: bool) -> list[str]:
    argv = [sys.executable, "-m", "ztun", "run", "--device", device, "--address", TUN_ADDRESS]
    argv += ["--proxy", f"socks5://127.0.0.1:{proxy_port}", "--auto-route", "--include", PREFIX]
    argv += ["--dns", "hijack" if dns else "off", "--loglevel", "debug"]
    return argv


def socks_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "ztun.servers.socks5",
        "--listen", f"127.0.0.1:{port}", "--map", f"{PREFIX}=127.0.0.1",
    ]  # fmt: skip


def ping_argv(ping: str, platform: str, host: str) -> list[str]:
    if platform == "win32":
        return [ping, "-n", "3", "-w", "3000", host]
    return [ping, "-c", "3", "-t", "15", host]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_target(blob: bytes) -> Iterator[int]:
    class Blob(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blob)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def udp_echo() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        sock.close()


class Process:
    """A child whose output lines are read by a thread, so a wait can end on one."""

    def __init__(self, name: str, argv: list[str]) -> None:
        print(f"start {name}: {' '.join(argv)}", flush=True)
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            print(f"  [{self.name}] {line.rstrip()}", flush=True)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first output line containing `text`; raises if the child exits first."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)  # each line restarts the wait, bounded
            except queue.Empty:
                raise TimeoutError(f"{self.name}: no {text!r} in {timeout:g} s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}) before {text!r}")
            self.seen.append(line)
            if text in line:
                return line

    def stop(self, *, graceful: bool) -> int:
        if self.proc.poll() is None:
            if graceful:
                self.proc.send_signal(signal.SIGINT)
            else:
                self.proc.kill()
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(STOP_TIMEOUT)


def route_is_the_tunnels(device: str) -> bool:
    """Whether the host's route to TARGET goes out of `device`, asked the way ztun's own
    route code asks (macOS: RTM_GET on a routing socket; Windows: GetBestRoute2)."""
    addr = ipaddress.ip_address(TARGET)
    name = device.removeprefix("tun://")
    if sys.platform == "darwin":
        from ztun.route.darwin import PfRouteSocket, RouteTable

        sock = PfRouteSocket()
        try:
            reply = RouteTable(sock, pid=os.getpid()).get(addr)
        finally:
            sock.close()
        return reply is not None and reply.interface is not None and reply.interface.name == name
    from ztun.route.windows import RouteHelper

    best = RouteHelper.load().best_route(addr)
    return best is not None and best.device == name


def resolver_servers() -> tuple[str, ...] | None:
    """The primary service's State: DNS ServerAddresses (macOS)."""
    from ztun.route import scutil

    service = scutil.primary_service(scutil.run_scutil(scutil.show_script(scutil.GLOBAL_IPV4)))
    entries = dict(scutil.ScutilResolver().read(f"State:/Network/Service/{service}/DNS") or ())
    value = entries.get("ServerAddresses")
    return value if isinstance(value, tuple) else None


def run(device: str, size: int, check_dns: bool) -> Results:
    results = Results()
    blob = secrets.token_bytes(size)
    graceful = sys.platform != "win32"
    with ExitStack() as stack:
        http_port = stack.enter_context(http_target(blob))
        udp_port = stack.enter_context(udp_echo())
        proxy_port = free_port(socket.SOCK_STREAM)
        socks = Process("socks5", socks_argv(proxy_port))
        stack.callback(socks.stop, graceful=False)
        socks.wait_for("listening on", STEP_TIMEOUT)
        dns_before = resolver_servers() if check_dns else None
        ztun = Process("ztun", ztun_argv(device, proxy_port, dns=check_dns))
        stack.callback(ztun.stop, graceful=False)
        ztun.wait_for("ztun ready", READY_TIMEOUT)

        results.check("route into the TUN", lambda: _expect(route_is_the_tunnels(device)))
        results.check("TCP download", lambda: _download(http_port, blob))
        results.check("UDP echo", lambda: _echo(udp_port))
        results.check("ping", _ping)
        if check_dns:
            results.check("resolver into the TUN", lambda: _resolver_is((TUN_PEER,)))
        code = ztun.stop(graceful=graceful)
        results.check("ztun stopped", lambda: _exit_ok(code, required=graceful))
        cleanup = subprocess.run(
            [sys.executable, "-m", "ztun", "cleanup"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT * 3,
        )
        print(cleanup.stdout + cleanup.stderr, flush=True)
        results.check("ztun cleanup", lambda: _exit_ok(cleanup.returncode, required=True))
        results.check("route restored", lambda: _expect(not route_is_the_tunnels(device)))
        if check_dns and dns_before is not None:
            results.check("resolver restored", lambda: _resolver_is(dns_before))
    return results


def _expect(ok: bool) -> str:
    if not ok:
        raise AssertionError("no")
    return "yes"


def _exit_ok(code: int, *, required: bool) -> str:
    """Exit status 0, or any status for a process that was killed on purpose."""
    if required and code != 0:
        raise AssertionError(f"exit status {code}")
    return f"exit {code}" + ("" if required else " (killed: the crash case)")


def _download(port: int, blob: bytes) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxy
    with opener.open(f"http://{TARGET}:{port}/blob", timeout=STEP_TIMEOUT) as response:
        body = response.read()
    want, got = hashlib.sha256(blob).hexdigest(), hashlib.sha256(body).hexdigest()
    if got != want:
        raise AssertionError(f"{len(body)} bytes, SHA-256 {got}, want {want}")
    return f"{len(body)} bytes, SHA-256 {got[:16]}..."


def _echo(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3.0)
        for attempt in range(5):  # UDP: the first datagram may race the association
            payload = f"ztun-{attempt}-{secrets.token_hex(8)}".encode()
            sock.sendto(payload, (TARGET, port))
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data == payload and peer[0] == TARGET:
                return f"{len(data)} bytes back from {peer[0]}:{peer[1]} (try {attempt + 1})"
        raise AssertionError("no echo in 5 tries")


def _ping() -> str:
    from ztun.tools import tool

    done = subprocess.run(
        ping_argv(tool("ping"), sys.platform, TARGET),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT * 2,
    )
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise AssertionError(f"ping exit {done.returncode}: {done.stderr.strip()}")
    return "3 echo replies" if sys.platform != "win32" else "replies"


def _resolver_is(servers: tuple[str, ...]) -> str:
    now = resolver_servers()
    if now != servers:
        raise AssertionError(f"ServerAddresses {now}, want {servers}")
    return " ".join(servers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default=DEFAULT_DEVICE.get(sys.platform))
    parser.add_argument("--size", type=int, default=4 << 20, help="download size (bytes)")
    parser.add_argument("--check-dns", action="store_true", help="macOS: --dns hijack too")
    args = parser.parse_args(argv)
    if sys.platform not in DEFAULT_DEVICE:
        print(
            f"platform smoke: refusing to run on {sys.platform}: it routes {PREFIX} into a "
            "TUN on this host; it is for the hosted macOS/Windows CI runners",
            file=sys.stderr,
        )
        return 2
    results = run(args.device, args.size, args.check_dns)
    print(f"platform smoke: {len(results.passed)} passed, {len(results.failed)} failed")
    return 0 if not results.failed else 1


if __name__ == "__main__":
    sys.exit(main())
