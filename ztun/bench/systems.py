"""The systems under test: how each is started, stopped and pointed at, in the client namespace.

`direct` and `socks-only` frame the tun2socks figures: the first is the kernel's own
forwarding (the physical limit), the second is an app speaking SOCKS5 itself to the same
danted (through proxychains4's LD_PRELOAD, which does the handshake in C inside connect()
and then leaves the socket to the app, so the data path is the app's own). The tun2socks
systems (ztun, sing-box with its three stacks) own a TUN that two /1 routes in the client
point into, and relay through danted for TCP and sing-box's socks inbound for UDP.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from ztun.tools import tool

from .. import netns
from ..proc import Proc, ProcError, await_condition, link_exists, log_has, spawn
from .servers import DANTED_PORT, FILE_SIZE, HOLD_PORT, HTTP_PORT, SOCKS_UDP_PORT, sing_box_path
from .topology import PROXY_C_V4, SERVER_V4, Topology

TUN_NAME = "zbtun0"
RELAY_HOP_PORT = 10_800  # socks-relay's loopback listener in the client namespace
START_TIMEOUT = 30.0
PROBE_TIMEOUT = 15.0
PROBE_SOCKET_TIMEOUT = 3.0


@dataclass
class Env:
    """What a system needs from the run: the namespaces and a directory for configs and logs."""

    topo: Topology
    workdir: str


@dataclass
class System:
    name: str
    env: Env
    proc: Proc | None = None
    carries_udp: bool = True
    client_prefix: list[str] = field(default_factory=list)
    #: False for a helper process that is billed for CPU but holds no tunnel's state
    #: (socks-relay's hop): the memory figure measures tun2socks implementations only.
    is_tun2socks: ClassVar[bool] = True

    @property
    def pid(self) -> int | None:
        """The tun2socks process whose CPU and memory are billed (None: nothing to bill)."""
        return self.proc.pid if self.proc else None

    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        """Start, carrying TCP through the SOCKS5 server on `tcp_port` and UDP through the
        one on `udp_port` (of the proxy namespace)."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None
        self.env.topo.route_into(None)

    def check_alive(self) -> None:
        if self.proc and not self.proc.alive():
            raise ProcError(f"{self.name} died: {self.proc.log_tail()}")

    def probe(self, tcp_port: int = DANTED_PORT) -> None:
        """One HTTP GET from the client, retried until it works: the path is up end to end
        (a TUN that exists is not yet a stack that answers). Against holdsocks, which
        relays nothing, a completed connect is all there is to see."""
        last: list[str] = []

        def fetch() -> bool:
            try:
                with netns.in_netns(self.env.topo.client):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with sock:
                    sock.settimeout(PROBE_SOCKET_TIMEOUT)
                    if tcp_port == HOLD_PORT:
                        sock.connect((SERVER_V4, HOLD_PORT))
                        return True
                    sock.connect((SERVER_V4, HTTP_PORT))
                    sock.sendall(f"GET /1k HTTP/1.0\r\nHost: {SERVER_V4}\r\n\r\n".encode())
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"z" * FILE_SIZE)
                if not ok:
                    last[:] = [repr(data[:100])]
                return ok
            except OSError as exc:
                last[:] = [str(exc)]
                return False

        def died() -> str | None:
            if self.proc and not self.proc.alive():
                return f"exited: {self.proc.log_tail()}"
            return None

        try:
            await_condition(fetch, PROBE_TIMEOUT, f"{self.name} to carry an HTTP GET", abort=died)
        except ProcError as exc:
            raise ProcError(f"{exc} (last: {last[0] if last else '-'})") from None


def proxychains(workdir: str, host: str, port: int) -> list[str]:
    """The command prefix that makes an app speak SOCKS5 to `host`:`port` itself."""
    conf = os.path.join(workdir, f"proxychains-{host}-{port}.conf")
    with open(conf, "w") as f:
        f.write(
            "strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
            f"[ProxyList]\nsocks5 {host} {port}\n"
        )
    return [tool("proxychains4"), "-q", "-f", conf]


class Direct(System):
    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        self.env.topo.set_forwarding(True)
        self.probe()

    def stop(self) -> None:
        super().stop()
        self.env.topo.set_forwarding(False)


class SocksOnly(System):
    """The app speaks SOCKS5: proxychains4 (strict chain to danted). The proxy namespace does
    not forward, so nothing can bypass it. No UDP: proxychains only hooks TCP connect()."""

    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        self.client_prefix = proxychains(self.env.workdir, PROXY_C_V4, tcp_port)
        self.carries_udp = False


class SocksRelay(System):
    """`socks-only` with one hop added: proxychains4 points at a loopback listener in the
    client namespace that relays to danted with ztun's splice relay (`relay_hop.py`). No
    TUN, no stack, no handshake of its own: the least a tun2socks that ends the app's TCP
    and relays it pays, so the gap from `socks-only` to here is the relay hop's and the gap
    from here to a tun2socks is its TUN path's. No UDP (proxychains)."""

    is_tun2socks = False

    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        self.proc = spawn(
            self.env.topo.client,
            [
                sys.executable,
                "-m",
                "ztun.bench.relay_hop",
                str(RELAY_HOP_PORT),
                PROXY_C_V4,
                str(tcp_port),
            ],
            name=f"relay-hop-{tcp_port}",
            workdir=self.env.workdir,
            ready=log_has(r"relay hop ready"),
            timeout=START_TIMEOUT,
        )
        self.client_prefix = proxychains(self.env.workdir, "127.0.0.1", RELAY_HOP_PORT)
        self.carries_udp = False


class Ztun(System):
    """`ztun run`; `extra` adds flags (ztun-redirect: the nftables fast path for TCP;
    ztun-w2: two worker processes on a two-queue TUN; ztun-stack: every TCP segment
    rewritten by ztun's stack, no kernel NAT; ztun-portable: no Linux acceleration, as
    on macOS and Windows)."""

    extra: tuple[str, ...] = ()

    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        env = self.env
        # `ip netns exec` execs: the pid we hold is ztun's own, not a wrapper's.
        self.proc = spawn(
            env.topo.client,
            [
                sys.executable,
                "-m",
                "ztun",
                "run",
                "--device",
                f"tun://{TUN_NAME}",
                "--proxy",
                f"socks5://{PROXY_C_V4}:{tcp_port}",
                "--udp-proxy",
                f"socks5://{PROXY_C_V4}:{udp_port}",
                "--loglevel",
                "info",
                *self.extra,
            ],
            name=f"ztun-{tcp_port}",
            workdir=env.workdir,
            ready=log_has(r"ztun ready"),
            timeout=START_TIMEOUT,
        )
        env.topo.route_into(TUN_NAME)
        self.probe(tcp_port)


class SingBox(System):
    """sing-box 1.14 with a TUN inbound; auto_route off (the bench owns the routes), defaults
    otherwise (its default TUN MTU is 9000, recorded in the JSON)."""

    def __init__(self, name: str, env: Env, stack: str) -> None:
        super().__init__(name, env)
        self.stack = stack

    def config(self, tcp_port: int, udp_port: int = SOCKS_UDP_PORT) -> dict[str, object]:
        return {
            "log": {"level": "warn"},
            "inbounds": [
                {
                    "type": "tun",
                    "tag": "tun-in",
                    "interface_name": TUN_NAME,
                    "address": ["172.19.0.1/30"],
                    "auto_route": False,
                    "stack": self.stack,
                }
            ],
            "outbounds": [
                {
                    "type": "socks",
                    "tag": "socks-tcp",
                    "server": PROXY_C_V4,
                    "server_port": tcp_port,
                    "version": "5",
                    "network": "tcp",
                },
                {
                    "type": "socks",
                    "tag": "socks-udp",
                    "server": PROXY_C_V4,
                    "server_port": udp_port,
                    "version": "5",
                    "network": "udp",
                },
            ],
            "route": {
                "rules": [{"network": "udp", "outbound": "socks-udp"}],
                "final": "socks-tcp",
            },
        }

    def start(self, *, tcp_port: int = DANTED_PORT, udp_port: int = SOCKS_UDP_PORT) -> None:
        env = self.env
        conf = os.path.join(env.workdir, f"{self.name}.json")
        with open(conf, "w") as f:
            json.dump(self.config(tcp_port, udp_port), f, indent=1)
        self.proc = spawn(
            env.topo.client,
            [sing_box_path(), "run", "-c", conf, "-D", env.workdir],
            name=f"{self.name}-{tcp_port}",
            workdir=env.workdir,
            ready=link_exists(env.topo.client, TUN_NAME),
            timeout=START_TIMEOUT,
        )
        env.topo.route_into(TUN_NAME)
        self.probe(tcp_port)


def make_system(name: str, env: Env) -> System:
    if name == "direct":
        return Direct(name, env, carries_udp=True)
    if name == "socks-only":
        return SocksOnly(name, env, carries_udp=False)
    if name == "socks-relay":
        return SocksRelay(name, env, carries_udp=False)
    if name == "ztun":
        return Ztun(name, env)
    if name == "ztun-redirect":
        system = Ztun(name, env)
        system.extra = ("--redirect",)
        return system
    if name == "ztun-w2":
        system = Ztun(name, env)
        system.extra = ("--workers", "2")
        return system
    if name == "ztun-stack":
        system = Ztun(name, env)
        system.extra = ("--no-kernel-nat",)
        return system
    if name == "ztun-portable":
        system = Ztun(name, env)
        system.extra = ("--portable",)
        return system
    if name.startswith("sing-box-"):
        return SingBox(name, env, name.removeprefix("sing-box-"))
    raise ValueError(f"unknown system {name}")
