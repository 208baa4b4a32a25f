"""The adapter interface every tun2socks under test implements.

An adapter knows three things about one implementation: how to find it in a host, how
to start it there for a given TUN device, addresses and proxy URL, and when it is ready.
Everything else -- the topology, the proxy, the traffic, the assertions -- is the same
for every implementation, which is what makes the conformance table a fair comparison.

The harness, not the implementation, owns the client's routing: ``start`` routes the
host's IPv4 and IPv6 traffic into the device once the implementation is ready (all of it
by default, see DEFAULT_ROUTES; only the documentation prefixes in the single-host
topology), so every implementation is measured on the same routes (``ztun run`` does not
auto-route, sing-box runs with ``auto_route: false``, a command template's implementation
is expected not to). The proxy stays reachable because it sits on a directly connected
subnet or on loopback, whose routes are more specific.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from harness.hosts import Host, Process
from ztun.tools import tool

DEFAULT_MTU = 1500
DEFAULT_ADDRESSES = ("172.19.0.1/30", "fdfe:dcba:9876::1/126")
"""ztun's defaults (CONTRACTS.md); used for any implementation when a test gives none."""

ROUTE_TIMEOUT = 10.0


SOCKS5_SCHEMES = ("socks5", "socks5h")


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """A parsed ``socks5://[user:pass@]host:port`` (``socks5h`` too; an adapter may
    accept more schemes, see ``Tun2Socks.proxy_schemes``)."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, schemes: Sequence[str] = SOCKS5_SCHEMES) -> ProxyEndpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in schemes:
            raise ValueError(f"proxy URL {url!r}: scheme must be {' or '.join(schemes)}")
        if not parts.hostname or parts.port is None:
            raise ValueError(f"proxy URL {url!r}: needs host and port")
        unquote = urllib.parse.unquote
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=parts.port,
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


@dataclass
class RunningImpl:
    """An implementation running in a host; stop it (or use ``with``) when done."""

    impl: str
    host: Host
    device: str
    addresses: tuple[str, ...]
    proxy_url: str
    mtu: int
    process: Process
    version: str
    config_path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> int:
        """Stop the process (SIGTERM, then SIGKILL); its device and routes go with it."""
        return self.process.stop()

    def log_text(self) -> str:
        return self.process.log_text()

    def alive(self) -> bool:
        return self.process.alive()

    def __enter__(self) -> RunningImpl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def normalise_addresses(addresses: Sequence[str] | None) -> tuple[str, ...]:
    """Validate CIDRs (a typo must fail here, not as a silent routing mystery)."""
    chosen = tuple(addresses) if addresses else DEFAULT_ADDRESSES
    for cidr in chosen:
        try:
            ipaddress.ip_interface(cidr)
        except ValueError:
            raise ValueError(f"address {cidr!r} is not a CIDR like 172.19.0.1/30") from None
    return chosen


DEFAULT_ROUTES = ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1")
"""What ``start`` routes into the device unless told otherwise: everything, as two halves
per family (OpenVPN's def1 trick), not as a default route.

Why: an implementation that watches the default route reacts to a new one. Measured with
sing-box 1.14.4 (auto_route off): about 1 s after start it logs "updated default
interface" and closes every connection it tracks (a 100 MiB upload started at once was cut
after 60 and 95 MiB). A user's auto_route installs routes before any traffic; the halves
give the same coverage without changing the default route, so no implementation resets
flows the harness already started, and no per-implementation wait is needed."""


def route_into(
    host: Host,
    device: str,
    addresses: Sequence[str],
    prefixes: Sequence[str] = DEFAULT_ROUTES,
) -> None:
    """Route ``prefixes`` into ``device``, for each family present in ``addresses``.

    ``replace`` rather than ``add``: idempotent if a test restarts an implementation.
    """
    families = {ipaddress.ip_interface(a).version for a in addresses}
    for prefix in prefixes:
        network = ipaddress.ip_network(prefix)
        if network.version not in families:
            continue
        argv = [tool("ip")] + (["-6"] if network.version == 6 else [])
        argv += ["route", "replace", str(network), "dev", device]
        host.run(argv, check=True, timeout=ROUTE_TIMEOUT)


def configure_device(host: Host, device: str, addresses: Sequence[str], mtu: int) -> None:
    """Set the MTU, add ``addresses`` and bring ``device`` up (for an implementation that
    only creates its TUN). IPv6 addresses skip duplicate address detection, or they stay
    "tentative" for a second and the first connections fail."""
    ip = tool("ip")
    host.run([ip, "link", "set", device, "mtu", str(mtu)], check=True, timeout=ROUTE_TIMEOUT)
    for cidr in addresses:
        v6 = ipaddress.ip_interface(cidr).version == 6
        argv = [ip, *(["-6"] if v6 else []), "addr", "replace", cidr, "dev", device]
        host.run(argv + (["nodad"] if v6 else []), check=True, timeout=ROUTE_TIMEOUT)
    host.run([ip, "link", "set", device, "up"], check=True, timeout=ROUTE_TIMEOUT)


class Tun2Socks(ABC):
    """An adapter: subclass, set ``name``, implement the three abstract methods."""

    name: str
    """The report's column; the entry point's name for the registered adapters."""

    proxy_schemes: tuple[str, ...] = SOCKS5_SCHEMES
    """The proxy URL schemes ``start`` accepts for this implementation."""

    @abstractmethod
    def unavailable_reason(self, host: Host) -> str | None:
        """Why this implementation cannot run in ``host`` (binary missing...), or None."""

    @abstractmethod
    def version(self, host: Host) -> str:
        """Version string, for the report header and the conformance table."""

    @abstractmethod
    def launch(
        self,
        host: Host,
        *,
        device: str,
        addresses: tuple[str, ...],
        proxy: ProxyEndpoint,
        proxy_url: str,
        mtu: int,
    ) -> tuple[Process, Path | None]:
        """Spawn the implementation and await its readiness; return it and its config."""

    def start(
        self,
        host: Host,
        *,
        device: str,
        addresses: Sequence[str] | None = None,
        proxy_url: str,
        mtu: int = DEFAULT_MTU,
        routes: Sequence[str] = DEFAULT_ROUTES,
    ) -> RunningImpl:
        """Start in ``host`` with a TUN ``device``, await readiness, route ``routes`` (by
        default everything) into it.

        Skips the test (naming what is missing) if the implementation is unavailable.
        """
        reason = self.unavailable_reason(host)
        if reason is not None:
            pytest.skip(f"{self.name}: {reason}")
        chosen = normalise_addresses(addresses)
        proxy = ProxyEndpoint.parse(proxy_url, self.proxy_schemes)
        version = self.version(host)
        process, config = self.launch(
            host, device=device, addresses=chosen, proxy=proxy, proxy_url=proxy_url, mtu=mtu
        )
        try:
            route_into(host, device, chosen, routes)
        except BaseException:
            process.stop()
            raise
        return RunningImpl(
            impl=self.name,
            host=host,
            device=device,
            addresses=chosen,
            proxy_url=proxy_url,
            mtu=mtu,
            process=process,
            version=version,
            config_path=config,
        )
