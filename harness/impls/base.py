"""The adapter interface every tun2socks under test implements.

An adapter knows three things about one implementation: how to find it in a host, how
to start it there for a given TUN device, addresses and proxy URL, and when it is ready.
Everything else -- the topology, the proxy, the traffic, the assertions -- is the same
for every implementation, which is what makes the conformance table a fair comparison.

The harness, not the implementation, owns the client's routing: ``start`` points the
host's IPv4 and IPv6 default routes into the device once the implementation is ready
(``ztun run`` does not auto-route, and sing-box runs with ``auto_route: false``), so every
implementation is measured on the same routes. The proxy stays reachable because it sits
on a directly connected subnet, whose route is more specific than the default.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pytest

from harness.hosts import Host, Process

DEFAULT_MTU = 1500
DEFAULT_ADDRESSES = ("172.19.0.1/30", "fdfe:dcba:9876::1/126")
"""ztun's defaults (CONTRACTS.md); used for any implementation when a test gives none."""

ROUTE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """A parsed ``socks5://[user:pass@]host:port`` (``socks5h`` too)."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> ProxyEndpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("socks5", "socks5h"):
            raise ValueError(f"proxy URL {url!r}: scheme must be socks5 or socks5h")
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


def route_default_into(host: Host, device: str, addresses: Sequence[str]) -> None:
    """Default routes of each family present in ``addresses`` into ``device``.

    ``replace`` rather than ``add``: idempotent if a test restarts an implementation.
    """
    families = {ipaddress.ip_interface(a).version for a in addresses}
    for version in sorted(families):
        argv = (
            ["ip"]
            + (["-6"] if version == 6 else [])
            + ["route", "replace", "default", "dev", device]
        )
        host.run(argv, check=True, timeout=ROUTE_TIMEOUT)


class Tun2Socks(ABC):
    """An adapter: subclass, set ``name``, implement the three abstract methods."""

    name: ClassVar[str]

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
    ) -> RunningImpl:
        """Start in ``host`` with a TUN ``device``, await readiness, route defaults into it.

        Skips the test (naming what is missing) if the implementation is unavailable.
        """
        reason = self.unavailable_reason(host)
        if reason is not None:
            pytest.skip(f"{self.name}: {reason}")
        chosen = normalise_addresses(addresses)
        proxy = ProxyEndpoint.parse(proxy_url)
        version = self.version(host)
        process, config = self.launch(
            host, device=device, addresses=chosen, proxy=proxy, proxy_url=proxy_url, mtu=mtu
        )
        try:
            route_default_into(host, device, chosen)
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
