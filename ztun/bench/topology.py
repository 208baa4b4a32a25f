"""The bench's three namespaces, built in a handful of readable lines (after WireGuard's netns.sh):

    client (apps, the tun2socks)  --veth--  proxy (danted, SOCKS5 UDP)  --veth--  server

Names carry the `ztbench-` prefix and the bench's pid, so parallel runs never collide and
`ztun cleanup` can find leftovers. The proxy forwards only while the `direct` system runs;
otherwise the server is reachable from the client only through the SOCKS5 servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ztun.tools import tool

from .. import netns
from ..proc import run

PREFIX = "ztbench-"
CLIENT_V4, PROXY_C_V4 = "10.210.0.1", "10.210.0.2"
PROXY_S_V4, SERVER_V4 = "10.211.0.1", "10.211.0.2"
CLIENT_NET, SERVER_NET = "10.210.0.0/24", "10.211.0.0/24"
SYSCTL_TIMEOUT = 10.0
DEF1 = ("0.0.0.0/1", "128.0.0.0/1")

# Tuned in every namespace: thousands of short connections (ab) and 10,000 held ones must
# not run out of ephemeral ports or accept-queue slots, which would measure the knob, not
# the tun2socks. All of these are per-namespace sysctls: the root namespace is untouched.
NS_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.ipv4.tcp_tw_reuse": "1",
    "net.core.somaxconn": "65535",
    "net.ipv4.tcp_max_syn_backlog": "65535",
}


@dataclass
class Topology:
    tag: str
    namespaces: list[str] = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"{PREFIX}{self.tag}-c"

    @property
    def proxy(self) -> str:
        return f"{PREFIX}{self.tag}-p"

    @property
    def server(self) -> str:
        return f"{PREFIX}{self.tag}-s"

    def build(self) -> None:
        for name in (self.client, self.proxy, self.server):
            netns.create(name)
            self.namespaces.append(name)
            sysctl(name, NS_SYSCTLS)
        short = self.tag[-5:]
        netns.veth(
            self.client,
            f"zbc{short}",
            self.proxy,
            f"zbp{short}",
            [f"{CLIENT_V4}/24"],
            [f"{PROXY_C_V4}/24"],
        )
        netns.veth(
            self.proxy,
            f"zbq{short}",
            self.server,
            f"zbs{short}",
            [f"{PROXY_S_V4}/24"],
            [f"{SERVER_V4}/24"],
        )
        # The default route and the way back, for `direct`: without forwarding in the proxy
        # they carry nothing, so every other system reaches the server only through SOCKS5.
        run(
            self.client,
            [tool("ip"), "route", "add", "default", "via", PROXY_C_V4],
            timeout=SYSCTL_TIMEOUT,
        )
        run(
            self.server,
            [tool("ip"), "route", "add", CLIENT_NET, "via", PROXY_S_V4],
            timeout=SYSCTL_TIMEOUT,
        )

    def set_forwarding(self, on: bool) -> None:
        sysctl(self.proxy, {"net.ipv4.ip_forward": "1" if on else "0"})

    def route_into(self, dev: str | None) -> None:
        """Send everything into a TUN with two /1 routes (wg-quick's and OpenVPN's def1 trick),
        or take them away (None).

        The default route stays on the veth: sing-box watches the default route and resets
        its connections when it moves (with auto_route off it logs "updated default
        interface" and the first iperf3 run dies), and a real machine keeps its default
        route while a tun2socks runs. The proxy is on-link (a /24), so it stays outside."""
        for half in DEF1:
            if dev:
                run(
                    self.client,
                    [tool("ip"), "route", "replace", half, "dev", dev],
                    timeout=SYSCTL_TIMEOUT,
                )
            else:
                run(
                    self.client,
                    [tool("ip"), "route", "del", half],
                    timeout=SYSCTL_TIMEOUT,
                    check=False,
                )

    def teardown(self) -> list[str]:
        """Remove every namespace (killing what runs inside); returns any that survived."""
        for name in reversed(self.namespaces):
            netns.remove(name)
        left = [n for n in self.namespaces if netns.exists(n)]
        self.namespaces.clear()
        return left


def sysctl(ns: str, values: dict[str, str]) -> None:
    run(
        ns,
        [tool("sysctl"), "-q", "-w", *(f"{k}={v}" for k, v in values.items())],
        timeout=SYSCTL_TIMEOUT,
    )


def new_topology() -> Topology:
    return Topology(tag=str(os.getpid()))
