"""Fixtures for auto-route tests: a private namespace with its own default route and TUN.

Everything happens inside a namespace created here and removed on teardown (also on
failure); the root namespace's routes and rules are never read or written.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.route.route_ns import NETNS_TIMEOUT, RouteNs
from ztun.tools import tool

RT_SCOPE_LINK = 253  # linux/rtnetlink.h
TABLE_LOCAL = 255
IFA_F_TENTATIVE = 0x40  # linux/if_addr.h

_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: needs root and creates network namespaces")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 not installed"
    return None


def _wait_ipv6_settled(ipr: Any, index: int) -> None:
    """Wait (bounded) until the kernel's own IPv6 set-up of a veth end is over.

    veth carrier comes up asynchronously (linkwatch), then addrconf adds the link-local
    address, clears its tentative flag from a work queue and only then inserts its local
    route: the last step is what must be seen before a "before" snapshot is taken.
    """

    def settled(command: str, **spec: Any) -> list[Any]:
        return [
            a
            for a in ipr.addr(command, **spec)
            if not (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE
        ]

    (addr,) = ipr.poll(
        settled,
        "dump",
        timeout=NETNS_TIMEOUT,
        index=index,
        family=socket.AF_INET6,
        scope=RT_SCOPE_LINK,
    )
    ipr.poll(
        ipr.route,
        "dump",
        timeout=NETNS_TIMEOUT,
        family=socket.AF_INET6,
        table=TABLE_LOCAL,
        dst=addr.get_attr("IFA_ADDRESS"),
    )


@pytest.fixture
def route_ns() -> Iterator[RouteNs]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from ztun import netns

    name = f"ztr{os.getpid() % 100000}x{next(_counter)}"
    # `ip netns add` + netlink from a thread inside the namespace: pyroute2's forked
    # helpers (netns.create, IPRoute(netns=...)) once left uplink0 in the root namespace
    # on a loaded machine.
    netns.create(name)
    try:
        # No DAD: link-local addresses become final as soon as a link has carrier, so the
        # kernel's own IPv6 set-up is over before the "before" snapshot is taken.
        for conf in ("all", "default"):
            subprocess.run(
                [
                    tool("ip"),
                    "netns",
                    "exec",
                    name,
                    tool("sysctl"),
                    "-qw",
                    f"net.ipv6.conf.{conf}.accept_dad=0",
                ],
                check=True,
                timeout=NETNS_TIMEOUT,
            )

        def build(ipr: Any) -> None:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            # a veth pair with both ends inside: the uplink needs a carrier for its routes
            ipr.link("add", ifname="uplink0", kind="veth", peer="uplinkpeer0")
            up = ipr.link_lookup(ifname="uplink0")[0]
            ipr.link("set", index=up, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="uplinkpeer0")[0], state="up")
            ipr.addr("add", index=up, address="10.250.0.2", prefixlen=24)
            ipr.addr("add", index=up, address="fd00:250::2", prefixlen=64, flags=0x02)
            ipr.route("add", dst="0.0.0.0/0", gateway="10.250.0.1", oif=up)
            ipr.route("add", dst="::/0", gateway="fd00:250::1", oif=up, family=10)
            ipr.link("add", ifname="zt0", kind="tuntap", mode="tun")
            tun = ipr.link_lookup(ifname="zt0")[0]
            ipr.link("set", index=tun, state="up")
            ipr.addr("add", index=tun, address="172.19.0.1", prefixlen=30)
            for ifname in ("uplink0", "uplinkpeer0"):
                _wait_ipv6_settled(ipr, ipr.link_lookup(ifname=ifname)[0])

        netns.netlink(name, build)
        yield RouteNs(name)
    finally:
        netns.remove(name)
