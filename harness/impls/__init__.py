"""Adapters for the tun2socks implementations the harness can certify.

``IMPLEMENTATIONS`` maps the ``--tun2socks`` option's values to adapter classes; an
adapter is instantiated with its options (``SingBox(stack="gvisor")``) and started with
``adapter.start(host, device=..., addresses=[...], proxy_url=..., mtu=...)``.
"""

from harness.impls.base import (
    DEFAULT_ADDRESSES,
    DEFAULT_MTU,
    ProxyEndpoint,
    RunningImpl,
    Tun2Socks,
    normalise_addresses,
    route_default_into,
)
from harness.impls.singbox import SingBox, bundled_binary, singbox_config
from harness.impls.ztun import Ztun

IMPLEMENTATIONS: dict[str, type[Tun2Socks]] = {
    Ztun.name: Ztun,
    SingBox.name: SingBox,
}


def get_implementation(name: str) -> type[Tun2Socks]:
    """The adapter class for ``name``; the error lists the known ones."""
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        known = ", ".join(sorted(IMPLEMENTATIONS))
        raise ValueError(f"unknown tun2socks implementation {name!r} (known: {known})") from None


__all__ = [
    "DEFAULT_ADDRESSES",
    "DEFAULT_MTU",
    "IMPLEMENTATIONS",
    "ProxyEndpoint",
    "RunningImpl",
    "SingBox",
    "Tun2Socks",
    "Ztun",
    "bundled_binary",
    "get_implementation",
    "normalise_addresses",
    "route_default_into",
    "singbox_config",
]
