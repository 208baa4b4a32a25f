"""Network namespaces for `ztun run --netns`, `ztun demo` and `ztun bench`.

Namespace is an argument, never ambient state: `in_netns` switches only the calling
thread and always switches back, so sockets and TUNs opened inside keep living in the
namespace while the caller carries on in its own.

Netlink goes through `netlink(name, fn)`: a fresh thread enters the namespace (setns on
the existing /run/netns entry, never creating one), checks that it really is there, and
creates *and uses* its pyroute2 socket in that thread. pyroute2 0.9 binds an IPRoute to
the thread that uses it, so an object made inside a namespace and used from another
thread talks to that other thread's namespace -- the root one, for a test runner. And
namespaces are made by `ip netns add`, which returns only once the namespace is mounted,
where pyroute2's forked helper can time out half-way on a loaded machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ztun.tools import tool

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02
"""Address flag (linux/if_addr.h): skip duplicate address detection, so an IPv6 address
is usable at once (otherwise "tentative" for ~1 s: bind()/connect() fail)."""
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def enter_netns(name: str) -> None:
    """Move the calling thread into the existing namespace `name` (called first thing in
    `ztun run --netns`, it moves the process: no other thread exists yet)."""
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns_fd(fd, name)
    finally:
        os.close(fd)


def _netns_inode(name: str) -> int:
    return os.stat(os.path.join(NETNS_DIR, name)).st_ino


def in_fresh_thread(
    fn: Callable[[], T], *, start: Callable[[threading.Thread], None] | None = None
) -> T:
    """Call `fn()` in a new thread that ends afterwards, and return its result (or raise
    its exception here): a namespace the thread enters never leaks into one reused for
    something else. `start` starts the thread (the harness blocks its stop signals)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="netns-helper", daemon=True)
    (start or threading.Thread.start)(thread)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def run_in_netns(
    name: str, fn: Callable[[], T], *, start: Callable[[threading.Thread], None] | None = None
) -> T:
    """Call `fn()` from a fresh thread that entered namespace `name` (and checked that it
    really is there): sockets it opens stay in the namespace, /proc/thread-self/net and
    /proc/sys/net resolve against it."""

    def entered() -> T:
        enter_netns(name)
        if os.stat("/proc/thread-self/ns/net").st_ino != _netns_inode(name):
            raise OSError(f"namespace {name!r}: setns did not take effect")
        return fn()

    return in_fresh_thread(entered, start=start)


def netlink(
    name: str, fn: Callable[[Any], T], *, start: Callable[[threading.Thread], None] | None = None
) -> T:
    """Call `fn(ipr)` with a pyroute2 IPRoute living in namespace `name`, from a thread
    that entered it (and ends afterwards)."""

    def call() -> T:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return fn(ipr)

    return run_in_netns(name, call, start=start)


def netlink_in(name: str | None, fn: Callable[[Any], T]) -> T:
    """`netlink(name, fn)`; with None, `fn(ipr)` with an IPRoute of the calling thread's
    own namespace."""
    if name:
        return netlink(name, fn)
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return fn(ipr)


def _setns_fd(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what}: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside `name` (no-op for None), then come back.

    The namespace must exist (it is never created here, unlike pyroute2's pushns).
    """
    if not name:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns_fd(home, "the original namespace")  # never go on in the wrong one
    finally:
        os.close(home)


def create(name: str) -> None:
    subprocess.run([tool("ip"), "netns", "add", name], check=True, capture_output=True, timeout=30)

    def lo_up(ipr: Any) -> None:
        (lo,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=lo, state="up")

    netlink(name, lo_up)


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def pids(name: str, timeout: float = 10.0) -> list[int]:
    """Pids of processes inside `name` (`ip netns pids` compares namespace inodes);
    none when the namespace is gone."""
    out = subprocess.run(
        [tool("ip"), "netns", "pids", name], capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        return []
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def kill_all(name: str) -> list[int]:
    """SIGKILL every process inside `name`; returns their pids (not awaited)."""
    found = pids(name)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def remove(name: str) -> None:
    """Kill what still runs inside, then delete the namespace (its links go with it)."""
    kill_all(name)
    if exists(name):
        subprocess.run([tool("ip"), "netns", "delete", name], capture_output=True, timeout=30)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return [tool("ip"), "netns", "exec", name, *argv]


def veth(
    ns_a: str,
    if_a: str,
    ns_b: str,
    if_b: str,
    addrs_a: Sequence[str] = (),
    addrs_b: Sequence[str] = (),
) -> None:
    """A veth pair created straight inside ns_a with its peer in ns_b, addressed and up."""
    peer_fd = os.open(os.path.join(NETNS_DIR, ns_b), os.O_RDONLY | os.O_CLOEXEC)
    try:
        netlink(
            ns_a,
            lambda ipr: ipr.link(
                "add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": peer_fd}
            ),
        )
    finally:
        os.close(peer_fd)
    for ns_name, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):

        def configure(ipr: Any, ifname: str = ifname, addrs: Sequence[str] = addrs) -> None:
            (index,) = ipr.link_lookup(ifname=ifname)
            for cidr in addrs:
                iface = ipaddress.ip_interface(cidr)
                kwargs: dict[str, Any] = {
                    "index": index,
                    "address": str(iface.ip),
                    "prefixlen": iface.network.prefixlen,
                }
                if iface.version == 6:
                    kwargs["flags"] = IFA_F_NODAD
                ipr.addr("add", **kwargs)
            ipr.link("set", index=index, state="up")

        netlink(ns_name, configure)


def default_route(name: str, ifname: str, versions: Sequence[int] = (4, 6)) -> None:
    def add(ipr: Any) -> None:
        (index,) = ipr.link_lookup(ifname=ifname)
        for version in versions:
            ipr.route(
                "add",
                dst="0.0.0.0/0" if version == 4 else "::/0",
                oif=index,
                family=2 if version == 4 else 10,
            )

    netlink(name, add)
