"""NetnsHost: a Linux network namespace as a Host.

How the harness gets "inside" a namespace, and why:

* **Commands** run as ``ip netns exec NAME argv...``: iproute2 enters the namespace,
  remounts ``/sys`` for it and *execs in place*, so the pid we hold is the program's.
* **Netlink, sysctls, sockets and /proc/net** are done from a short-lived helper thread
  that calls ``setns(2)`` into the namespace (:func:`run_in_netns`).  A network namespace
  is a per-*task* attribute, so only that thread moves; the sockets it creates stay bound
  to the namespace for their whole life, ``/proc/sys/net/*`` and
  ``/proc/thread-self/net/*`` resolve against the thread's namespace, and pyroute2's
  ``IPRoute()`` opened there talks to the namespace's kernel tables.  The alternative,
  pyroute2's ``netns.create_socket`` / ``IPRoute(netns=...)``, forks a child of the
  (multi-threaded) pytest process for every socket -- slower, and fork-after-threads is
  a deadlock lottery.
* **Creation** uses the same trick: the helper thread ``unshare(CLONE_NEWNET)`` and
  pyroute2's ``netns.attach`` bind-mounts ``/proc/<tid>/ns/net`` on ``/run/netns/NAME``;
  removal is pyroute2's ``netns.remove`` after every process inside has been killed, and
  is *verified* (the name is gone and ``ip netns pids`` had nothing left).

The primitives (entering a namespace from a helper thread, netlink there, the
/run/netns listing, ``ip netns pids``/``exec``) are :mod:`ztun.netns`'s, which
``ztun run --netns``, ``ztun demo`` and ``ztun bench`` use too; this module adds the Host.

Nothing here touches the root namespace: veth pairs are created inside one namespace
with their peer placed directly in the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket as socketlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from harness.hosts.base import (
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SPAWN_TIMEOUT,
    IfAddress,
    LinkExists,
    PathExists,
    Readiness,
    TcpListening,
    UdpListening,
)
from harness.hosts.children import ChildHost
from harness.owners import claim_owner, owner_prefix
from harness.proc import (
    start_thread_without_signals,
    wait_pids_gone,
)
from ztun import netns
from ztun.proc import poll_until
from ztun.tools import tool

if TYPE_CHECKING:
    from pyroute2 import IPRoute

# pyroute2 is imported where used: it costs ~0.7 s, and the plugin (hence this module)
# is loaded by every pytest run, including unit tests that never touch a namespace.

__all__ = [
    "BASE_SYSCTLS",
    "NETNS_RUN_DIR",
    "NetnsError",
    "NetnsHost",
    "kill_netns_pids",
    "list_netns",
    "netns_pids",
    "remove_netns",
    "run_in_netns",
]

T = TypeVar("T")

NETNS_RUN_DIR = Path(netns.NETNS_DIR)

KILL_WAIT = 5.0
"""Seconds to wait for processes left in a namespace to die after SIGKILL."""

OFFLOAD_FEATURES = ("tx", "rx", "tso", "gso", "gro")
"""Turned off on every test link: with them on, veth hands packets over with partial
(or no) checksums and as 64 KiB super-packets, so a capture would show neither real
checksums nor wire-sized segments."""

BASE_SYSCTLS: Mapping[str, str] = {
    # IPv6 addresses usable at once; no router solicitations/SLAAC noise in captures.
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_ra": "0",
    "net/ipv6/conf/default/accept_ra": "0",
    "net/ipv6/conf/all/disable_ipv6": "0",
    "net/ipv6/conf/default/disable_ipv6": "0",
    # A tun2socks answers from addresses that are not routed back through the TUN, so
    # strict reverse-path filtering would silently drop its replies.
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    # Unprivileged ICMP echo sockets (ping without CAP_NET_RAW; ztun's ICMP option).
    "net/ipv4/ping_group_range": "0 2147483647",
}
"""Applied to every namespace before any link exists (new links copy ``default``)."""

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace could not be created, configured or verifiably removed."""


# --------------------------------------------------------------------------- primitives


def _netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` from a helper thread that has entered namespace ``name``."""
    return netns.run_in_netns(name, fn, start=start_thread_without_signals)


def create_netns(name: str) -> None:
    """Create ``/run/netns/NAME`` for a fresh namespace, without forking."""
    if _netns_path(name).exists():
        raise NetnsError(
            f"namespace {name!r} already exists (leftover? `python -m harness cleanup`)"
        )

    prefix = owner_prefix(name)
    if prefix is not None:
        claim_owner(prefix)  # before creating: a crash in between leaves a claimed name

    def unshare_and_attach() -> None:
        if _libc.unshare(netns.CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        from pyroute2 import netns as pr_netns

        # /proc/<tid>/ns/net is this thread's (new) namespace.
        pr_netns.attach(name, threading.get_native_id())

    netns.in_fresh_thread(unshare_and_attach, start=start_thread_without_signals)


list_netns = netns.list_names
"""Names in /run/netns starting with a prefix."""


def netns_pids(name: str) -> list[int]:
    """Pids of processes inside ``name`` (``ip netns pids``: compares ns inodes)."""
    return netns.pids(name, timeout=DEFAULT_RUN_TIMEOUT)


def kill_netns_pids(name: str, timeout: float = KILL_WAIT) -> list[int]:
    """SIGKILL every process inside ``name`` and await their exit; returns the pids."""
    pids = netns.kill_all(name)
    survivors = wait_pids_gone(pids, timeout)
    if survivors:
        raise NetnsError(f"processes {survivors} in namespace {name!r} survived SIGKILL")
    return pids


def remove_netns(name: str) -> list[int]:
    """Kill what runs inside, remove the namespace, verify it is gone; returns killed pids.

    A namespace lives as long as a process or a mount holds it: the name going away is
    not enough, so processes are killed first and the result is checked.
    """
    from pyroute2 import netns as pr_netns

    killed = kill_netns_pids(name) if _netns_path(name).exists() else []
    with contextlib.suppress(FileNotFoundError):
        pr_netns.remove(name)
    if _netns_path(name).exists():
        raise NetnsError(f"namespace {name!r} still present after removal")
    return killed


# --------------------------------------------------------------------------- host


def addresses_of(ipr: IPRoute, ifname: str | None = None) -> list[IfAddress]:
    """Addresses (with prefix) on ``ifname``, or on every interface, as ``ipr`` sees them."""
    kwargs: dict[str, Any] = {}
    if ifname is not None:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(f"no interface {ifname!r}")
        kwargs["index"] = int(found[0])
    return [
        ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(**kwargs)
    ]


def _proc_net_ports(text: str, *, listen_only: bool) -> set[int]:
    """Local ports in a /proc/net/{tcp,udp}[6] table (hex ``ADDR:PORT``; state 0A=LISTEN)."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        if listen_only and fields[3] != "0A":
            continue
        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class NetnsHost(ChildHost):
    """A Host backed by a network namespace; see the module docstring.

    ``NetnsHost(name, log_dir=...)`` creates the namespace, brings ``lo`` up and applies
    :data:`BASE_SYSCTLS` plus ``sysctls``.  With ``create=False`` it adopts an existing
    namespace (and :meth:`close` does not remove it).
    """

    def __init__(
        self,
        name: str,
        *,
        log_dir: Path,
        sysctls: Mapping[str, str] | None = None,
        forwarding: bool = False,
        create: bool = True,
        label: str | None = None,
    ) -> None:
        super().__init__(name, log_dir)
        self.label = label or name
        """Short role name ("client") for file names and messages."""
        self._owned = create
        self._closed = False
        if create:
            create_netns(name)
        try:
            settings = dict(BASE_SYSCTLS)
            flag = "1" if forwarding else "0"
            settings["net/ipv4/ip_forward"] = flag
            settings["net/ipv6/conf/all/forwarding"] = flag
            settings.update(sysctls or {})
            self.set_sysctls(settings)
            self.link_up("lo")
        except BaseException:
            if create:
                remove_netns(name)
            raise

    def __repr__(self) -> str:
        return f"<NetnsHost {self._name}>"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the namespace."""
        return netns.exec_argv(self._name, argv)

    # ------------------------------------------------------------------ readiness

    def listening_ports(self, kind: str, family: int | None = None) -> set[int]:
        """Ports with a TCP listener (``kind="tcp"``) or bound UDP socket (``"udp"``)."""
        tables = []
        if family in (None, socketlib.AF_INET):
            tables.append(kind)
        if family in (None, socketlib.AF_INET6):
            tables.append(kind + "6")

        def read() -> set[int]:
            ports: set[int] = set()
            for table in tables:
                with contextlib.suppress(FileNotFoundError):
                    text = Path(f"/proc/thread-self/net/{table}").read_text()
                    ports |= _proc_net_ports(text, listen_only=kind == "tcp")
            return ports

        return run_in_netns(self._name, read)

    def is_ready(self, ready: Readiness) -> bool:
        """Check a non-log readiness condition once (the probe LocalProcess polls)."""
        if isinstance(ready, TcpListening):
            return ready.port in self.listening_ports("tcp", ready.family)
        if isinstance(ready, UdpListening):
            return ready.port in self.listening_ports("udp", ready.family)
        if isinstance(ready, PathExists):
            # Inside the namespace: `ip netns exec` mounts the namespace's own /sys (and
            # /etc/netns/NAME), which the harness's mount namespace does not see.
            return self.run([tool("test"), "-e", str(ready.path)]).ok
        if isinstance(ready, LinkExists):
            return self.netlink(lambda ipr: bool(ipr.link_lookup(ifname=ready.name)))
        raise TypeError(f"{type(ready).__name__} is not a host condition")

    def socket(
        self,
        family: socketlib.AddressFamily | int = socketlib.AF_INET,
        type: socketlib.SocketKind | int = socketlib.SOCK_STREAM,
        proto: int = 0,
    ) -> socketlib.socket:
        return run_in_netns(self._name, lambda: socketlib.socket(family, type, proto))

    # ------------------------------------------------------------------ configuration

    def netlink(self, fn: Callable[[IPRoute], T]) -> T:
        """Call ``fn(ipr)`` with a pyroute2 ``IPRoute`` bound to this namespace."""

        return netns.netlink(self._name, fn, start=start_thread_without_signals)

    def set_sysctls(self, settings: Mapping[str, str]) -> None:
        """Write ``/proc/sys`` keys (``net/ipv4/ip_forward`` or ``net.ipv4.ip_forward``)."""

        def write() -> None:
            for key, value in settings.items():
                path = Path("/proc/sys") / key.replace(".", "/")
                path.write_text(f"{value}\n")

        run_in_netns(self._name, write)

    def sysctl(self, key: str) -> str:
        path = Path("/proc/sys") / key.replace(".", "/")
        return run_in_netns(self._name, lambda: path.read_text().strip())

    def link_up(self, ifname: str, *, mtu: int | None = None) -> None:
        def up(ipr: IPRoute) -> None:
            index = self._index(ipr, ifname)
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=index, state="up")

        self.netlink(up)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self.netlink(lambda ipr: ipr.link("set", index=self._index(ipr, ifname), mtu=mtu))

    def add_address(self, ifname: str, address: IfAddress | str) -> None:
        """Add an address; IPv6 ones with ``nodad`` so they are usable immediately."""
        iface = ipaddress.ip_interface(address)
        flags = netns.IFA_F_NODAD if iface.version == 6 else 0

        def add(ipr: IPRoute) -> None:
            ipr.addr(
                "add",
                index=self._index(ipr, ifname),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                flags=flags,
            )

        self.netlink(add)

    def add_route(
        self,
        dst: str,
        *,
        dev: str | None = None,
        via: str | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> None:
        """Add a route (``dst`` like ``default``, ``10.0.0.0/8``, ``::/0``) inside the host.

        ``default`` is IPv4; say ``::/0`` (or give an IPv6 ``via``) for IPv6.
        """
        argv = [tool("ip")]
        is_v6 = ":" in dst or (via is not None and ":" in via)
        if is_v6:
            argv.append("-6")
        argv += ["route", "add", dst]
        if via is not None:
            argv += ["via", via]
        if dev is not None:
            argv += ["dev", dev]
        if table is not None:
            argv += ["table", str(table)]
        if metric is not None:
            argv += ["metric", str(metric)]
        self.run(argv, check=True)

    def disable_offloads(self, ifname: str) -> None:
        """``ethtool -K IF tx off rx off tso off gso off gro off`` (see OFFLOAD_FEATURES)."""
        argv = [tool("ethtool"), "-K", ifname]
        for feature in OFFLOAD_FEATURES:
            argv += [feature, "off"]
        self.run(argv, check=True)

    def operstates(self) -> dict[str, str]:
        """``{ifname: operstate}`` (``UP``, ``DOWN``, ``UNKNOWN`` for lo and TUNs...)."""
        return self.netlink(
            lambda ipr: {
                str(link.get("ifname")): str(link.get("operstate")) for link in ipr.get_links()
            }
        )

    def wait_links_up(
        self, ifnames: Sequence[str], *, timeout: float = DEFAULT_SPAWN_TIMEOUT
    ) -> None:
        """Await operstate UP on ``ifnames`` (carrier is propagated asynchronously).

        Polled with a bounded back-off: a netlink subscription would be the event, but
        with the ifindex trick in harness.topo links are up by the first check.
        """
        down: dict[str, str] = {}

        def all_up() -> bool:
            states = self.operstates()
            down.clear()
            down.update({n: states.get(n, "missing") for n in ifnames if states.get(n) != "UP"})
            return not down

        if not poll_until(all_up, timeout):
            raise NetnsError(f"{self._name}: links not up within {timeout:g}s: {down}")

    def interfaces(self) -> list[str]:
        return self.netlink(lambda ipr: [str(link.get("ifname")) for link in ipr.get_links()])

    def addresses(self, ifname: str | None = None) -> list[IfAddress]:
        return self.netlink(lambda ipr: addresses_of(ipr, ifname))

    @staticmethod
    def _index(ipr: IPRoute, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(f"no interface {ifname!r}")
        return int(found[0])

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.stop_processes()
        finally:
            if self._owned:
                remove_netns(self._name)
