"""`ztun demo`: the main job on an embedded default, end to end, in throwaway namespaces.

    client (ztun + apps)  --veth--  proxy (SOCKS5)  --veth--  server (HTTP, DNS)

The proxy namespace does not forward, so the server is reachable from the client only
through the SOCKS5 proxy: whatever arrives proves ztun carried it. Everything is
removed at the end, also on failure or Ctrl-C (`ztun cleanup` removes what a kill -9
left behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ztun.tools import tool

from . import netns
from .proc import Proc, listening, log_has, spawn, stop_all
from .servers.danted import danted_config

PREFIX = "ztdemo-"
CLIENT_V4, PROXY_C_V4 = "10.200.0.1", "10.200.0.2"
PROXY_S_V4, SERVER_V4 = "10.201.0.1", "10.201.0.2"
SERVER_V6 = "fd00:201::2"
TCP_PORT, UDP_PORT = 1080, 1081
HTTP_PORT = 8080
DNS_NAME = "demo.ztun.test"
READY_TIMEOUT = 20.0


@dataclass
class _Demo:
    workdir: str
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{PREFIX}{os.getpid()}-{role}"

    def spawn(self, name: str, ns: str, argv: list[str], ready: Callable[[Proc], bool]) -> Proc:
        proc = spawn(ns, argv, name=name, workdir=self.workdir, ready=ready, timeout=READY_TIMEOUT)
        self.procs.append(proc)
        return proc

    def teardown(self) -> None:
        stop_all(self.procs)
        for name in reversed(self.namespaces):
            netns.remove(name)


def _build_topology(demo: _Demo) -> tuple[str, str, str]:
    client, proxy, server = demo.ns("client"), demo.ns("proxy"), demo.ns("server")
    for name in (client, proxy, server):
        netns.create(name)
        demo.namespaces.append(name)
    tag = str(os.getpid() % 100000)
    netns.veth(client, f"zdc{tag}", proxy, f"zdp{tag}", [f"{CLIENT_V4}/24"], [f"{PROXY_C_V4}/24"])
    netns.veth(
        proxy,
        f"zdq{tag}",
        server,
        f"zds{tag}",
        [f"{PROXY_S_V4}/24", "fd00:201::1/64"],
        [f"{SERVER_V4}/24", f"{SERVER_V6}/64"],
    )
    return client, proxy, server


def _start_servers(demo: _Demo, server: str, blob_dir: str) -> str:
    py = sys.executable
    demo.spawn(
        "http",
        server,
        [py, "-m", "http.server", "--bind", SERVER_V4, "--directory", blob_dir, str(HTTP_PORT)],
        listening(server, HTTP_PORT),
    )
    if shutil.which(tool("dnsmasq")):
        demo.spawn(
            "dnsmasq",
            server,
            [
                tool("dnsmasq"),
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={SERVER_V4}",
                "--port=53",
                f"--address=/{DNS_NAME}/{SERVER_V4}",
                "--log-queries",
                "--log-facility=-",
                "--pid-file=",
            ],
            listening(server, 53, udp=True),
        )
        return "dnsmasq"
    demo.spawn(
        "dns",
        server,
        [
            py,
            "-m",
            "ztun.servers.dns",
            "--listen",
            f"{SERVER_V4}:53",
            "--answer",
            f"{DNS_NAME}={SERVER_V4}",
        ],
        listening(server, 53, udp=True),
    )
    return "built-in DNS"


def _danted_config(path: str) -> None:
    config = danted_config(
        [(PROXY_C_V4, UDP_PORT)], [PROXY_S_V4], log="connect disconnect", rotation_by_route=False
    )
    with open(path, "w") as f:
        f.write(config)


def _start_proxies(demo: _Demo, proxy: str, choice: str) -> tuple[str, str, list[Proc]]:
    py = sys.executable
    procs = []
    tcp_kind = choice
    if choice == "auto":
        tcp_kind = "microsocks" if shutil.which(tool("microsocks")) else "builtin"
    if tcp_kind == "microsocks":
        procs.append(
            demo.spawn(
                "microsocks",
                proxy,
                [tool("microsocks"), "-i", PROXY_C_V4, "-p", str(TCP_PORT)],
                listening(proxy, TCP_PORT),
            )
        )
    elif tcp_kind == "danted":
        conf = os.path.join(demo.workdir, "danted-tcp.conf")
        _danted_config(conf)
        with open(conf) as f:
            text = f.read().replace(f"port = {UDP_PORT}", f"port = {TCP_PORT}")
        with open(conf, "w") as f:
            f.write(text)
        procs.append(
            demo.spawn(
                "danted-tcp",
                proxy,
                [tool("danted"), "-f", conf, "-N", "1"],
                listening(proxy, TCP_PORT),
            )
        )
    else:
        procs.append(
            demo.spawn(
                "socks5",
                proxy,
                [py, "-m", "ztun.servers.socks5", "--listen", f"{PROXY_C_V4}:{TCP_PORT}"],
                listening(proxy, TCP_PORT),
            )
        )
    if shutil.which(tool("danted")) and choice in ("auto", "danted", "microsocks"):
        conf = os.path.join(demo.workdir, "danted.conf")
        _danted_config(conf)
        procs.append(
            demo.spawn(
                "danted", proxy, [tool("danted"), "-f", conf, "-N", "1"], listening(proxy, UDP_PORT)
            )
        )
        udp_kind = "danted"
    else:
        procs.append(
            demo.spawn(
                "socks5-udp",
                proxy,
                [py, "-m", "ztun.servers.socks5", "--listen", f"{PROXY_C_V4}:{UDP_PORT}"],
                listening(proxy, UDP_PORT),
            )
        )
        udp_kind = "builtin"
    return tcp_kind, udp_kind, procs


def _http_get(client: str, path: str) -> tuple[bytes, float]:
    with netns.in_netns(client):
        sock = socket.create_connection((SERVER_V4, HTTP_PORT), timeout=30)
    started = time.monotonic()
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {SERVER_V4}\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"HTTP download failed: {head[:200]!r}")
    return body, time.monotonic() - started


def _dns_query(client: str) -> str:
    from dnslib import DNSRecord

    query = DNSRecord.question(DNS_NAME, "A")
    with netns.in_netns(client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5)
        sock.sendto(query.pack(), (SERVER_V4, 53))
        data, _ = sock.recvfrom(4096)
    answer = DNSRecord.parse(data)
    return ", ".join(str(rr.rdata) for rr in answer.rr) or "(no answer)"


def _ping(client: str) -> str:
    if not shutil.which(tool("ping")):
        return "skipped (ping not installed)"
    out = subprocess.run(
        netns.exec_argv(client, [tool("ping"), "-c", "3", "-i", "0.2", "-W", "2", SERVER_V4]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    summary = next(
        (line for line in out.stdout.splitlines() if "packets transmitted" in line),
        out.stdout.strip(),
    )
    return summary


def _stats_from(log_text: str) -> dict[str, Any]:
    match = re.search(r"ztun stopped stats=(\{.*\})", log_text)
    return json.loads(match.group(1)) if match else {}


@contextlib.contextmanager
def _demo_session() -> Iterator[_Demo]:
    with tempfile.TemporaryDirectory(prefix="ztun-demo-") as workdir:
        demo = _Demo(workdir)
        try:
            yield demo
        finally:
            demo.teardown()


def run_demo(size: int = 8 << 20, socks: str = "auto") -> int:
    if os.geteuid() != 0:
        print("ztun demo: needs root (it creates network namespaces and a TUN)", file=sys.stderr)
        return 1
    out = sys.stdout
    with _demo_session() as demo:
        print("ztun demo: building client / proxy / server namespaces", file=out, flush=True)
        client, proxy, server = _build_topology(demo)
        blob_dir = os.path.join(demo.workdir, "www")
        os.mkdir(blob_dir)
        blob = os.urandom(size)
        with open(os.path.join(blob_dir, "blob"), "wb") as f:
            f.write(blob)
        dns_kind = _start_servers(demo, server, blob_dir)
        tcp_kind, udp_kind, proxy_procs = _start_proxies(demo, proxy, socks)
        ztun = demo.spawn(
            "ztun",
            client,
            [
                sys.executable,
                "-m",
                "ztun",
                "run",
                "--device",
                "tun://ztun0",
                "--proxy",
                f"socks5://{PROXY_C_V4}:{TCP_PORT}",
                "--udp-proxy",
                f"socks5://{PROXY_C_V4}:{UDP_PORT}",
            ],
            log_has(r"ztun ready"),
        )
        netns.default_route(client, "ztun0")
        print(
            f"  client {client}: ztun0 172.19.0.1/30 + fdfe:dcba:9876::1/126, "
            "default route -> ztun0",
            file=out,
        )
        print(
            f"  proxy  {proxy}: {tcp_kind} on {PROXY_C_V4}:{TCP_PORT} (TCP), {udp_kind} on "
            f"{PROXY_C_V4}:{UDP_PORT} (UDP); does not forward",
            file=out,
        )
        print(
            f"  server {server}: HTTP on {SERVER_V4}:{HTTP_PORT}, {dns_kind} on {SERVER_V4}:53",
            file=out,
        )
        print("", file=out)

        try:
            body, seconds = _http_get(client, "/blob")
        except (OSError, RuntimeError) as exc:
            print(f"  TCP   HTTP GET /blob FAILED: {exc or type(exc).__name__}", file=out)
            body, seconds = b"", 0.0
        ok = hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
        rate = len(body) * 8 / seconds / 1e6 if seconds else 0.0
        print(
            f"  TCP   HTTP GET /blob: {len(body)} bytes in {seconds:.2f} s ({rate:.0f} Mbit/s), "
            f"sha256 {'matches' if ok else 'DIFFERS'} ({hashlib.sha256(body).hexdigest()[:16]}...)",
            file=out,
        )
        try:
            answer = _dns_query(client)
        except OSError as exc:  # a timeout too: say which step failed, then clean up
            answer = f"FAILED ({exc or type(exc).__name__})"
        print(f"  UDP   DNS A {DNS_NAME} via UDP ASSOCIATE -> {answer}", file=out)
        print(f"  ICMP  ping {SERVER_V4} (echo answered by ztun): {_ping(client)}", file=out)

        ztun.stop()  # SIGTERM: ztun logs its counters and removes its TUN
        stats = _stats_from(ztun.log_text())
        print("", file=out)
        print(
            "  ztun counters: "
            + ", ".join(
                f"{k}={stats[k]}"
                for k in (
                    "tcp_flows",
                    "tcp_bytes_up",
                    "tcp_bytes_down",
                    "udp_sessions_total",
                    "udp_datagrams_up",
                    "udp_datagrams_down",
                )
                if k in stats
            ),
            file=out,
        )
        if stats.get("stack"):
            print(f"  ztun stack: {stats['stack']}", file=out)
        print("  the proxy's view:", file=out)
        for proc in proxy_procs:
            lines = [
                ln
                for ln in proc.log_text().splitlines()
                if re.search(r"connect|CONNECT|UDP|udp|10\.201", ln)
            ][-4:]
            for ln in lines:
                print(f"    [{proc.name}] {ln.strip()[:160]}", file=out)
        success = ok and SERVER_V4 in answer
    print(
        f"ztun demo: removed {len(demo.namespaces)} namespaces; "
        f"{'traffic flowed through ztun' if success else 'SOMETHING FAILED'}",
        file=out,
    )
    return 0 if success else 1
