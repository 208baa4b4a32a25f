"""Network namespaces for `ztun run --netns` and `ztun demo` (pyroute2; nothing in the root ns).

Namespace is an argument, never ambient state: `in_netns` switches only the calling
thread and always switches back, so sockets and TUNs opened inside keep living in the
namespace while the caller carries on in its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

NETNS_DIR = "/run/netns"


def enter_netns(name: str) -> None:
    """Move this process (its main thread, before any other starts) into `name`."""
    from pyroute2 import netns

    netns.setns(name)


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside `name` (no-op for None), then come back."""
    if not name:
        yield
        return
    from pyroute2 import netns

    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def create(name: str) -> None:
    from pyroute2 import NetNS, netns

    netns.create(name)
    with NetNS(name) as ns:
        (lo,) = ns.link_lookup(ifname="lo")
        ns.link("set", index=lo, state="up")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    return [int(p) for p in out.stdout.split()]


def remove(name: str) -> None:
    """Kill what still runs inside, then delete the namespace (its links go with it)."""
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    from pyroute2 import netns

    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def veth(
    ns_a: str,
    if_a: str,
    ns_b: str,
    if_b: str,
    addrs_a: Sequence[str] = (),
    addrs_b: Sequence[str] = (),
) -> None:
    """A veth pair created straight inside ns_a with its peer in ns_b, addressed and up."""
    from pyroute2 import NetNS

    with NetNS(ns_a) as a:
        a.link(
            "add",
            ifname=if_a,
            kind="veth",
            peer={"ifname": if_b, "net_ns_fd": f"{NETNS_DIR}/{ns_b}"},
        )
    for ns_name, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
        with NetNS(ns_name) as ns:
            (index,) = ns.link_lookup(ifname=ifname)
            for cidr in addrs:
                iface = ipaddress.ip_interface(cidr)
                kwargs: dict[str, Any] = {
                    "index": index,
                    "address": str(iface.ip),
                    "prefixlen": iface.network.prefixlen,
                }
                if iface.version == 6:
                    kwargs["flags"] = 0x02  # IFA_F_NODAD: usable at once, no 1-2 s DAD wait
                ns.addr("add", **kwargs)
            ns.link("set", index=index, state="up")


def default_route(name: str, ifname: str, versions: Sequence[int] = (4, 6)) -> None:
    from pyroute2 import NetNS

    with NetNS(name) as ns:
        (index,) = ns.link_lookup(ifname=ifname)
        for version in versions:
            ns.route(
                "add",
                dst="0.0.0.0/0" if version == 4 else "::/0",
                oif=index,
                family=2 if version == 4 else 10,
            )
