"""Declarative topologies of namespaces and veth links, built and torn down as a unit.

A topology is a small spec -- hosts, and links between two hosts with an IPv4 and/or
IPv6 subnet -- in the spirit of WireGuard's ``netns.sh``: a reader sees the network in a
handful of lines.  :func:`client_proxy_server` is the default one::

    client --veth-- proxy --veth-- server

The proxy does *not* forward, so the server is reachable from the client only through
a SOCKS5 proxy running on the proxy host.  The client gets no default route: the
adapter of the implementation under test adds the route into its TUN.

Naming.  Every namespace and link name starts with :data:`NAME_PREFIX` ("zt") followed by
a session tag, a worker tag (``m`` without xdist, ``w3`` for ``gw3``) and a ``-``; that
whole string is the *owner prefix* the leak check and ``python -m harness cleanup`` look
for.  A per-topology counter follows, so two tests (or two workers, or two concurrent
pytest runs) never collide.  Link names must fit IFNAMSIZ-1 = 15 characters.

Addresses are *not* made unique: each namespace has its own stack, so the same
10.200.1.0/24 in two tests never meets -- and fixed addresses keep golden pcaps identical
across runs and workers.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from harness.defer import DeferStack
from harness.hosts.netns import NetnsHost
from harness.owners import NAME_PREFIX

__all__ = [
    "IFNAMSIZ_MAX",
    "NAME_PREFIX",
    "Endpoint",
    "HostSpec",
    "Link",
    "LinkSpec",
    "NameScope",
    "Namer",
    "Topology",
    "TopologySpec",
    "client_proxy_server",
]

IFNAMSIZ_MAX = 15
"""Longest interface name Linux accepts (IFNAMSIZ is 16 including the NUL)."""

SESSION_TAG_LEN = 4
COUNTER_DIGITS = 3
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_COUNTER_SPACE = len(_BASE36) ** COUNTER_DIGITS

VETH_IFINDEX_BASE = 1000
"""ifindex given to the ``a`` end of link i (``VETH_IFINDEX_BASE + i``).

Kernel quirk: linkwatch treats a carrier change as *urgent* only when a device's ifindex
differs from its iflink (the peer's ifindex).  Two fresh namespaces both number their
first veth 2, so the ends of the first link would have equal ifindex/iflink, and the
carrier-up event would be rate-limited to the next linkwatch slot -- up to a second of
operstate DOWN, during which IPv6 neighbour solicitations go unanswered.  Giving one end
an index no namespace of ours reaches makes every link up at once."""

LINK_UP_TIMEOUT = 5.0
"""Seconds every link end gets to report operstate UP after the build."""

DEFAULT_SUBNET_INDEX = 1
"""The X in 10.200.X.0/24: fixed (see module docstring on addresses)."""


def _base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, len(_BASE36))
        digits.append(_BASE36[rem])
    return "".join(reversed(digits))


# --------------------------------------------------------------------------- naming


def worker_tag(worker_id: str | None) -> str:
    """``gw3`` -> ``w3``; no worker (plain pytest, the xdist controller) -> ``m``."""
    if not worker_id or worker_id == "master":
        return "m"
    return "w" + worker_id.removeprefix("gw")


def new_session_tag() -> str:
    return secrets.token_hex(SESSION_TAG_LEN // 2)


class Namer:
    """Hands out name scopes under one owner prefix (one per pytest process)."""

    def __init__(self, session_tag: str | None = None, worker_id: str | None = None) -> None:
        if worker_id is None:
            worker_id = os.environ.get("PYTEST_XDIST_WORKER")
        self.session_tag = session_tag or new_session_tag()
        self.worker = worker_tag(worker_id)
        self.prefix = f"{NAME_PREFIX}{self.session_tag}{self.worker}-"
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def session_prefix(self) -> str:
        """Prefix shared by every worker of the session (what the controller checks)."""
        return f"{NAME_PREFIX}{self.session_tag}"

    def scope(self) -> NameScope:
        with self._lock:
            counter = self._counter
            self._counter = (self._counter + 1) % _COUNTER_SPACE
        return NameScope(self.prefix, _base36(counter, COUNTER_DIGITS))


@dataclass(frozen=True, slots=True)
class NameScope:
    """Names for one topology: ``<prefix><counter>-<host>`` and ``<prefix><counter><i><side>``."""

    prefix: str
    counter: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}{self.counter}"

    def netns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def link(self, index: int, side: str) -> str:
        name = f"{self.tag}{_BASE36[index]}{side}"
        if len(name) > IFNAMSIZ_MAX:
            raise ValueError(f"link name {name!r} exceeds {IFNAMSIZ_MAX} characters")
        return name


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host of the topology. ``forwarding`` sets ip_forward and IPv6 forwarding."""

    name: str
    forwarding: bool = False
    sysctls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A veth pair between hosts ``a`` and ``b``.

    In each subnet ``a`` gets host number ``a_index`` and ``b`` gets ``b_index``
    (``10.200.1.0/24`` -> ``.1`` and ``.2``).  ``mtu`` applies to both ends.
    """

    a: str
    b: str
    ipv4: str | None = None
    ipv6: str | None = None
    mtu: int | None = None
    a_index: int = 1
    b_index: int = 2


@dataclass(frozen=True, slots=True)
class TopologySpec:
    hosts: tuple[HostSpec, ...]
    links: tuple[LinkSpec, ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[HostSpec | str], links: Iterable[LinkSpec] = ()) -> TopologySpec:
        """Build from host names or specs; validates."""
        spec = cls(
            tuple(h if isinstance(h, HostSpec) else HostSpec(h) for h in hosts), tuple(links)
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {names}")
        for name in names:
            if not name.isidentifier() or not name.isascii():
                raise ValueError(f"host name {name!r} must be a short identifier")
        if len(self.links) > len(_BASE36):
            raise ValueError(f"at most {len(_BASE36)} links per topology")
        for link in self.links:
            for end in (link.a, link.b):
                if end not in names:
                    raise ValueError(f"link {link.a}-{link.b} names unknown host {end!r}")
            if link.a == link.b:
                raise ValueError(f"link {link.a}-{link.b} loops to itself")


def client_proxy_server(x: int = DEFAULT_SUBNET_INDEX) -> TopologySpec:
    """The default topology of CONTRACTS.md (proxy does not forward)."""
    return TopologySpec.of(
        hosts=[HostSpec("client"), HostSpec("proxy", forwarding=False), HostSpec("server")],
        links=[
            LinkSpec("client", "proxy", ipv4=f"10.200.{x}.0/24", ipv6=f"fd00:200:{x}::/64"),
            LinkSpec("proxy", "server", ipv4=f"10.201.{x}.0/24", ipv6=f"fd00:201:{x}::/64"),
        ],
    )


# --------------------------------------------------------------------------- built topology

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a built link: which host, which interface, which addresses."""

    host: str
    ifname: str
    ipv4: ipaddress.IPv4Interface | None
    ipv6: ipaddress.IPv6Interface | None

    def ip(self, family: int = 4) -> IpAddress:
        """The bare address of the given family (4 or 6)."""
        iface = self.ipv4 if family == 4 else self.ipv6
        if iface is None:
            raise LookupError(f"{self.host}/{self.ifname} has no IPv{family} address")
        return iface.ip


@dataclass(frozen=True, slots=True)
class Link:
    spec: LinkSpec
    a: Endpoint
    b: Endpoint

    def end(self, host: str) -> Endpoint:
        if host == self.a.host:
            return self.a
        if host == self.b.host:
            return self.b
        raise LookupError(f"host {host!r} is not on link {self.a.host}-{self.b.host}")

    def peer(self, host: str) -> Endpoint:
        """The end facing ``host``."""
        return self.b if self.end(host) is self.a else self.a


def _address(subnet: str | None, index: int) -> ipaddress.IPv4Interface | None:
    if subnet is None:
        return None
    net = ipaddress.ip_network(subnet)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{subnet} is not an IPv4 subnet")
    return ipaddress.IPv4Interface(f"{net[index]}/{net.prefixlen}")


def _address6(subnet: str | None, index: int) -> ipaddress.IPv6Interface | None:
    if subnet is None:
        return None
    net = ipaddress.ip_network(subnet)
    if not isinstance(net, ipaddress.IPv6Network):
        raise ValueError(f"{subnet} is not an IPv6 subnet")
    return ipaddress.IPv6Interface(f"{net[index]}/{net.prefixlen}")


class Topology:
    """Hosts and links of a spec, built at construction, removed by :meth:`close`.

    Hosts are reachable as ``topo["client"]``, ``topo.host("client")`` or
    ``topo.client``.  If building fails halfway, what exists is torn down before the
    error propagates.
    """

    def __init__(self, spec: TopologySpec, *, scope: NameScope, log_dir: Path) -> None:
        spec.validate()
        self.spec = spec
        self.scope = scope
        self.log_dir = Path(log_dir)
        self._hosts: dict[str, NetnsHost] = {}
        self._links: list[Link] = []
        self._defer = DeferStack()
        try:
            self._build()
        except BaseException:
            self._defer.close()
            raise

    def _build(self) -> None:
        for hspec in self.spec.hosts:
            host = NetnsHost(
                self.scope.netns(hspec.name),
                log_dir=self.log_dir / hspec.name,
                forwarding=hspec.forwarding,
                sysctls=hspec.sysctls,
                label=hspec.name,
            )
            self._defer.defer(host.close, f"remove namespace {host.name}")
            self._hosts[hspec.name] = host
        for index, lspec in enumerate(self.spec.links):
            self._links.append(self._build_link(index, lspec))
        for name, host in self._hosts.items():
            ends = [
                link.end(name).ifname for link in self._links if name in (link.a.host, link.b.host)
            ]
            host.wait_links_up(ends, timeout=LINK_UP_TIMEOUT)

    def _build_link(self, index: int, lspec: LinkSpec) -> Link:
        a = Endpoint(
            lspec.a,
            self.scope.link(index, "a"),
            _address(lspec.ipv4, lspec.a_index),
            _address6(lspec.ipv6, lspec.a_index),
        )
        b = Endpoint(
            lspec.b,
            self.scope.link(index, "b"),
            _address(lspec.ipv4, lspec.b_index),
            _address6(lspec.ipv6, lspec.b_index),
        )
        host_a, host_b = self._hosts[lspec.a], self._hosts[lspec.b]
        peer_ns = f"/run/netns/{host_b.name}"
        # Created inside a's namespace with the peer placed straight into b's: the root
        # namespace never sees either end.  Removing a namespace destroys the pair.
        host_a.netlink(
            lambda ipr: ipr.link(
                "add",
                ifname=a.ifname,
                index=VETH_IFINDEX_BASE + index,
                kind="veth",
                peer={"ifname": b.ifname, "net_ns_fd": peer_ns},
            )
        )
        for host, end in ((host_a, a), (host_b, b)):
            host.disable_offloads(end.ifname)
            for addr in (end.ipv4, end.ipv6):
                if addr is not None:
                    host.add_address(end.ifname, addr)
            host.link_up(end.ifname, mtu=lspec.mtu)
        return Link(lspec, a, b)

    # ------------------------------------------------------------------ access

    @property
    def hosts(self) -> dict[str, NetnsHost]:
        return dict(self._hosts)

    @property
    def links(self) -> tuple[Link, ...]:
        return tuple(self._links)

    def host(self, name: str) -> NetnsHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise LookupError(f"no host {name!r} in topology ({sorted(self._hosts)})") from None

    def __getitem__(self, name: str) -> NetnsHost:
        return self.host(name)

    def __getattr__(self, name: str) -> NetnsHost:
        # Only reached for names that are not attributes: topo.client, topo.proxy...
        hosts = self.__dict__.get("_hosts", {})
        if name in hosts:
            return hosts[name]  # type: ignore[no-any-return]
        raise AttributeError(name)

    def link(self, a: str, b: str) -> Link:
        for link in self._links:
            if {link.a.host, link.b.host} == {a, b}:
                return link
        raise LookupError(f"no link between {a!r} and {b!r}")

    def endpoint(self, host: str, toward: str) -> Endpoint:
        """``host``'s end of its link to ``toward``."""
        return self.link(host, toward).end(host)

    def iface(self, host: str, toward: str) -> str:
        return self.endpoint(host, toward).ifname

    def address(self, host: str, toward: str, family: int = 4) -> IpAddress:
        """``host``'s address on its link to ``toward`` (what ``toward`` connects to)."""
        return self.endpoint(host, toward).ip(family)

    def describe(self) -> str:
        """A human rendering (written to the test's artifacts)."""
        lines = [f"topology {self.scope.tag}"]
        for name, host in self._hosts.items():
            lines.append(f"  host {name}: netns {host.name}")
        for link in self._links:
            for end in (link.a, link.b):
                addrs = " ".join(str(a) for a in (end.ipv4, end.ipv6) if a is not None)
                lines.append(f"  {end.host}:{end.ifname} {addrs}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ teardown

    def defer(self, fn: Callable[[], object], what: str) -> None:
        """Register an extra undo that runs before the namespaces go (LIFO)."""
        self._defer.defer(fn, what)

    def close(self) -> None:
        """Stop processes, remove namespaces, verify; safe to call twice."""
        self._defer.close()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
